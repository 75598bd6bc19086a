"""Saliency-map post-processing shared by every method and by the stream's attention helper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def normalize_maps(maps: Tensor) -> Tensor:
    """Min-max normalize each map over its last two dims to [0, 1] (thesis (1.7)).

    A constant map has no range and becomes all zeros, never NaN. "Constant" includes a range within a
    few units in the last place of the map's magnitude: bilinear upsampling of an exactly constant map
    leaves such rounding noise, which min-max would otherwise blow up to the full [0, 1].
    """
    flat = maps.flatten(-2)
    low, span, has_range = _ranges(flat)
    out = (flat - low) / torch.where(has_range, span, torch.ones_like(span))
    return torch.where(has_range, out, torch.zeros_like(out)).view_as(maps)


def _ranges(flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each row's minimum, range and whether it has one (beyond a few ulps, see :func:`normalize_maps`)."""
    low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)  # torch.aminmax: 3x slower here
    span = high - low
    return low, span, span > 8 * torch.finfo(flat.dtype).eps * torch.maximum(low.abs(), high.abs())


def normalized_channel_sum(terms: Tensor, eps: float = 0.0) -> Tensor:
    """``normalize_maps(terms).sum(1)`` for (B, C, h, w) ``terms`` the caller no longer needs: normalized
    in place (a channel without range divides by infinity, i.e. becomes 0), the same values with a third
    of the passes over memory; FullGrad sums 20 such layers per image. ``eps > 0`` divides every channel
    by its range + ``eps`` instead (pytorch-grad-cam's FullGrad normalization, with 1e-7)."""
    flat = terms.flatten(-2)
    low, span, has_range = _ranges(flat)
    divisor = span + eps if eps > 0 else torch.where(has_range, span, torch.full_like(span, torch.inf))
    flat.sub_(low).div_(divisor)
    return flat.sum(1).view(terms.shape[0], *terms.shape[-2:])


def upsample_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinearly resize ``(B, h, w)`` maps to ``size`` (the input resolution)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)


def finalize_maps(maps: Tensor, size: tuple[int, int] | None, normalize: bool) -> Tensor:
    """The standard map pipeline of PROTOCOL.md: optional upsampling to ``size``, then optional min-max."""
    if size is not None:
        maps = upsample_maps(maps, size)
    return normalize_maps(maps) if normalize else maps


def _oriented(projection: Tensor, centered: Tensor) -> Tensor:
    """A principal component's projection (B, N) with the sign of its correlation with the channel sum of
    the centered terms (B, N, K): SVD and eigen solvers fix no sign, and a flipped map would be removed by
    the methods' ReLU. pytorch-grad-cam keeps whatever sign LAPACK returns."""
    sign = torch.sign((projection * centered.sum(dim=2)).sum(dim=1, keepdim=True))
    return projection * torch.where(sign == 0, torch.ones_like(sign), sign)


def _positions(terms: Tensor) -> Tensor:
    """(B, K, h, w) -> (B, h*w, K) in at least float32, each channel centered over the positions."""
    if terms.dim() != 4:
        raise ValueError(f"expected (B, K, h, w) per-channel terms, got shape {tuple(terms.shape)}")
    x = terms.flatten(2).transpose(1, 2)
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    return x - x.mean(dim=1, keepdim=True)


def eigen_projection(terms: Tensor) -> Tensor:
    """(B, K, h, w) -> (B, h, w): each position's K-vector, centered over the positions, projected on the
    first principal component (EigenCAM, Muhammad & Yeasin 2020; pytorch-grad-cam's ``eigen_smooth``),
    oriented to correlate positively with the channel sum.

    The projection ``x v_1 = s_1 u_1`` comes from the top eigenpair of the smaller Gram matrix, ``x x^T``
    (positions) or ``x^T x`` (channels), in float64 (float32 on MPS): the SVD of ResNet-18's last stage
    (8 images at 224²) cost 8 % of the forward, this eigenpair a fraction of that."""
    x = _positions(terms)
    wide = x.double() if x.device.type != "mps" else x  # MPS has no float64
    if x.shape[1] <= x.shape[2]:  # fewer positions than channels: x x^T = U S^2 U^T
        values, vectors = torch.linalg.eigh(wide @ wide.transpose(1, 2))
        projection = vectors[..., -1] * values[:, -1:].clamp(min=0).sqrt()
    else:  # x^T x = V S^2 V^T
        projection = (wide @ torch.linalg.eigh(wide.transpose(1, 2) @ wide)[1][..., -1:]).squeeze(-1)
    return _oriented(projection.to(x.dtype), x).view(terms.shape[0], *terms.shape[-2:])


KERNELS = ("linear", "poly", "rbf", "sigmoid", "cosine")


def kernel_projection(terms: Tensor, kernel: str = "sigmoid", gamma: float | None = None) -> Tensor:
    """(B, K, h, w) -> (B, h, w): kernel PCA of the centered positions (KPCA-CAM, Karmani et al. 2024, as
    pytorch-grad-cam computes it with scikit-learn's ``KernelPCA(n_components=1)``): the first eigenvector
    of the doubly-centered kernel matrix times the square root of its eigenvalue. Kernels and defaults
    are scikit-learn's: ``gamma`` = 1 / K, ``coef0`` = 1, degree 3; oriented as :func:`eigen_projection`."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    x = _positions(terms)
    gamma = 1.0 / x.shape[-1] if gamma is None else float(gamma)
    dot = x @ x.transpose(1, 2)
    if kernel == "linear":
        k = dot
    elif kernel == "poly":
        k = (gamma * dot + 1) ** 3
    elif kernel == "sigmoid":
        k = torch.tanh(gamma * dot + 1)
    elif kernel == "rbf":
        squared = dot.diagonal(dim1=1, dim2=2)
        k = torch.exp(-gamma * (squared[:, :, None] + squared[:, None, :] - 2 * dot).clamp(min=0))
    else:
        norms = x.norm(dim=2).clamp(min=torch.finfo(x.dtype).tiny)
        k = dot / (norms[:, :, None] * norms[:, None, :])
    k = k - k.mean(dim=1, keepdim=True) - k.mean(dim=2, keepdim=True) + k.mean(dim=(1, 2), keepdim=True)
    values, vectors = torch.linalg.eigh(k)
    projection = vectors[..., -1] * values[..., -1:].clamp(min=0).sqrt()
    return _oriented(projection, x).view(terms.shape[0], *terms.shape[-2:])
