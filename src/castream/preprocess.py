"""Input normalization and the ONE pixel-space masking function used by every method and metric.

Models see normalized images ``(x - mean) / std``. Masking an image by a saliency map must happen in
pixel space (PROTOCOL.md): denormalize, blend with a baseline by the map, normalize again. Because the
normalization is affine per channel, that blend is done directly on normalized tensors:
``masked = b + m * (x - b)`` where ``b`` is the *normalized* baseline image (black pixels by default).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import Tensor, nn

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# CIFAR-100 training-set statistics, as weiaicunzai/pytorch-cifar100 (the recipe of thesis §4.3.1) uses
CIFAR100_MEAN: tuple[float, float, float] = (0.5070751592371323, 0.48654887331495095, 0.4409178433670343)
CIFAR100_STD: tuple[float, float, float] = (0.2673342858792401, 0.2564384629170883, 0.27615047132568404)
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
}

BASELINES = ("black", "mean", "blur")
BLUR_KERNELS = ("gaussian", "rise")


def _kernel_line(kernel: str, size: int, sigma: float) -> Tensor:
    """The 1-D factor of a separable blur kernel (both kernels are outer products of it)."""
    if kernel == "gaussian":
        coords = torch.arange(size, dtype=torch.float64) - size // 2
        line = torch.exp(-(coords**2) / (2 * sigma**2))
        return line / line.sum()
    from scipy.ndimage import gaussian_filter1d

    # gkern: gaussian_filter of a 2-D delta, which filters each axis in turn: the outer product of this
    delta = np.zeros(size)
    delta[size // 2] = 1.0
    return torch.from_numpy(gaussian_filter1d(delta, sigma, mode="reflect"))


# below the 1/255 = 0.0039 of a model of 0-255 pixels, by a margin: no [0, 1] normalization needs less
MIN_STD = 1e-3


def _numbers(name: str, values) -> tuple[float, ...]:
    """``values`` as a tuple of finite floats: a sequence (or 1-D tensor) of real numbers, no booleans."""
    if isinstance(values, Tensor | np.ndarray):
        values = values.tolist()
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise TypeError(f"{name} must be a sequence of numbers, one per channel; got {values!r}")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Real)]
    if bad:
        raise TypeError(f"{name} must hold real numbers, one per channel; got {bad[0]!r} in {tuple(values)}")
    out = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def _statistics(mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Checked input statistics of [0, 1] pixel images: the same number of finite values, each mean in
    [0, 1] and each std in [MIN_STD, 1]; 0-255 statistics are refused with the values divided by 255."""
    mean, std = _numbers("mean", mean), _numbers("std", std)
    if len(mean) != len(std) or len(mean) == 0:
        raise ValueError(f"mean and std must have the same non-zero length, got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {std}")
    if any(not 0 <= m <= 1 for m in mean) or any(s > 1 for s in std):
        hint = ""
        if all(0 <= v <= 255 for v in mean + std):
            scaled = ", ".join(f"{v / 255:.4g}" for v in mean), ", ".join(f"{v / 255:.4g}" for v in std)
            hint = f"; 0-255 statistics? divided by 255 they are mean ({scaled[0]}) std ({scaled[1]})"
        raise ValueError(
            f"statistics mean {mean} std {std} cannot describe castream's images, which are pixels in "
            f"[0, 1] (each mean in [0, 1], each std at most 1){hint}"
        )
    if any(s < MIN_STD for s in std):
        raise ValueError(
            f"std {std} is below {MIN_STD}: no normalization of [0, 1] pixels divides by less (a model of "
            "0-255 pixels has mean 0 and std 1/255 = 0.0039)"
        )
    return mean, std


class Preprocess:
    """Per-channel normalization of pixel images in [0, 1], with pixel-space masking.

    ``Preprocess(mean=(0, 0, 0), std=(1, 1, 1))`` describes a model that takes raw [0, 1] pixels.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean, self.std = _statistics(mean, std)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Preprocess) and (self.mean, self.std) == (other.mean, other.std)

    def __hash__(self) -> int:
        return hash((self.mean, self.std))

    def declare(self, model: nn.Module) -> nn.Module:
        """Record these statistics on ``model`` (as ``model.castream_preprocess``) so that every method and
        metric called without ``preprocess=`` uses them; returns the model. castream's loaders and
        ``StreamModel`` declare them for you where they are known."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"declare() takes a torch.nn.Module, got {type(model).__name__}")
        model.castream_preprocess = self
        return model

    @classmethod
    def named(cls, name: str) -> Preprocess:
        """The statistics of a named dataset: ``"imagenet"`` or ``"cifar100"``."""
        if name not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {name!r}; expected one of {list(NORMALIZATIONS)}")
        return cls(*NORMALIZATIONS[name])

    def __repr__(self) -> str:
        return f"Preprocess(mean={self.mean}, std={self.std})"

    def _stats(self, images: Tensor) -> tuple[Tensor, Tensor]:
        if images.dim() < 3 or images.shape[-3] != len(self.mean):
            raise ValueError(
                f"expected images of shape (..., {len(self.mean)}, H, W) for {len(self.mean)}-channel "
                f"statistics, got {tuple(images.shape)}"
            )
        shape = (len(self.mean), 1, 1)
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(shape)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(shape)
        return mean, std

    def normalize(self, images: Tensor) -> Tensor:
        """Pixel images in [0, 1] -> model input."""
        mean, std = self._stats(images)
        return (images - mean) / std

    def denormalize(self, images: Tensor) -> Tensor:
        """Model input -> pixel images in [0, 1]."""
        mean, std = self._stats(images)
        return images * std + mean

    def baseline(
        self,
        images: Tensor,
        kind: str | Tensor = "black",
        *,
        kernel: str = "gaussian",
        kernel_size: int = 11,
        sigma: float = 5.0,
        padding: str = "reflect",
    ) -> Tensor:
        """A normalized baseline image for each image: what masked-out pixels become.

        ``kind``: ``"black"`` (pixel value 0), ``"mean"`` (the normalization mean colour, i.e. the dataset
        mean), ``"blur"`` (a blur of the image), or a tensor of *pixel* values broadcastable to ``images``.

        The blur's ``kernel``: ``"gaussian"``, a Gaussian of ``sigma`` truncated to ``kernel_size`` and
        renormalized (torchvision's ``gaussian_blur``); or ``"rise"``, RISE's and the CA-Stream authors'
        ``gkern(kernel_size, sigma)``: ``scipy.ndimage.gaussian_filter`` of a centred delta in a
        ``kernel_size`` square (reflect mode, truncated at 4 σ). For σ near or above the size this is
        almost flat: ``gkern(5, 5)`` is a 5 x 5 box filter (weights 0.0400 ± 3e-6), ``gkern(11, 5)`` has
        weights 0.0077-0.0088 where the Gaussian has 0.0044-0.0120.

        ``padding``: ``"reflect"`` (default: the image is reflected; a Gaussian kernel is capped at
        ``2 * min(H, W) - 1`` for small images) or ``"zeros"``: zero padding of the *normalized* image,
        i.e. the dataset mean colour beyond the border, as the authors' and RISE's
        ``conv2d(x, kernel, padding=k // 2)``.
        """
        mean, std = self._stats(images)
        if isinstance(kind, Tensor):
            return (kind.to(images) - mean) / std
        if kind == "black":
            return (-mean / std).expand_as(images)
        if kind == "mean":
            return torch.zeros_like(images)
        if kind != "blur":
            raise ValueError(f"unknown baseline {kind!r}; expected one of {BASELINES} or a pixel tensor")
        if kernel not in BLUR_KERNELS:
            raise ValueError(f"blur kernel must be one of {BLUR_KERNELS}, got {kernel!r}")
        if padding not in ("reflect", "zeros"):
            raise ValueError(f"blur padding must be 'reflect' or 'zeros', got {padding!r}")
        if kernel == "gaussian" and padding == "reflect":
            # Blurring commutes with the per-channel affine normalization (reflect padding, unit-sum kernel).
            # Reflect padding needs the kernel to be shorter than twice the image side.
            kernel_size = min(kernel_size, 2 * min(images.shape[-2:]) - 1)
            flat = images.reshape(-1, *images.shape[-3:])
            return TF.gaussian_blur(flat, [kernel_size, kernel_size], [sigma, sigma]).view_as(images)
        if kernel_size % 2 == 0:
            raise ValueError(f"this blur needs an odd kernel_size, got {kernel_size}")
        half = kernel_size // 2
        if padding == "reflect" and half >= min(images.shape[-2:]):
            raise ValueError(
                f"a reflect-padded {kernel_size} x {kernel_size} kernel needs images larger than {half} "
                f"pixels, got {tuple(images.shape[-2:])}"
            )
        line = _kernel_line(kernel, kernel_size, sigma).to(images.device, images.dtype)
        channels = images.shape[-3]
        flat = images.reshape(-1, *images.shape[-3:])
        if padding == "reflect":
            flat = F.pad(flat, (half, half, half, half), mode="reflect")
        pad = (half, 0) if padding == "zeros" else 0
        rows = line.view(1, 1, -1, 1).expand(channels, 1, kernel_size, 1)
        blurred = F.conv2d(flat, rows, padding=pad, groups=channels)  # separable: rows, then columns
        blurred = F.conv2d(blurred, rows.transpose(2, 3), padding=pad[::-1] if pad else 0, groups=channels)
        return blurred.view_as(images)

    def mask(self, images: Tensor, maps: Tensor, baseline: str | Tensor = "black") -> Tensor:
        """Mask normalized ``images`` (..., C, H, W) by ``maps`` (..., H, W) in [0, 1], in pixel space.

        Where the map is 1 the pixel is kept; where it is 0 it becomes the baseline. ``baseline`` is a
        kind accepted by :meth:`baseline` (black by default) or a *normalized* baseline tensor
        broadcastable to ``images`` (e.g. the output of :meth:`baseline`, computed once and reused).
        Leading dims of ``maps`` and ``images`` broadcast.
        """
        if maps.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"maps of spatial size {tuple(maps.shape[-2:])} do not match images of size "
                f"{tuple(images.shape[-2:])}; upsample them first"
            )
        base = baseline if isinstance(baseline, Tensor) else self.baseline(images, baseline)
        return torch.lerp(base.to(images.dtype), images, maps.unsqueeze(-3).to(images.dtype))


def declared(model: nn.Module) -> Preprocess | None:
    """The input statistics ``model`` declares: :meth:`Preprocess.declare`'s attribute, a timm
    ``pretrained_cfg`` mean and std, or those of a wrapped ``backbone`` (a StreamModel's); None when it
    declares none (a torchvision or Hugging Face model does not know the statistics it was trained with)."""
    own = getattr(model, "castream_preprocess", None)
    if isinstance(own, Preprocess):
        return own
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("mean") and cfg.get("std"):
        return Preprocess(cfg["mean"], cfg["std"])
    inner = getattr(model, "backbone", None)
    return declared(inner) if isinstance(inner, nn.Module) and inner is not model else None


def resolve_preprocess(model: nn.Module, preprocess: Preprocess | None, user: str) -> Preprocess:
    """``preprocess`` when given, else the statistics ``model`` declares (:func:`declared`), else an error:
    masking in pixel space with guessed statistics gives wrong numbers without a word (EfficientNet-Lite0,
    trained with mean = std = 0.5, moves from AD 42% to 73% under ImageNet's)."""
    if preprocess is not None:
        if not isinstance(preprocess, Preprocess):
            raise TypeError(f"preprocess must be a castream.Preprocess, got {type(preprocess).__name__}")
        return preprocess
    found = declared(model)
    if found is None:
        raise ValueError(
            f"{user} masks images in pixel space and needs the input statistics {type(model).__name__} was "
            "trained with, which it does not declare: pass preprocess=castream.Preprocess(mean, std) "
            "(castream.Preprocess() for ImageNet's), or declare them once with "
            "castream.Preprocess(mean, std).declare(model); castream never guesses them"
        )
    return found


RECORDED = ("castream.mean", "castream.std")  # safetensors metadata keys of the training statistics


def recorded_metadata(preprocess: Preprocess | None) -> dict[str, str]:
    """The safetensors metadata that records ``preprocess`` with a model's weights (none for None)."""
    import json

    if preprocess is None:
        return {}
    return dict(zip(RECORDED, (json.dumps(list(preprocess.mean)), json.dumps(list(preprocess.std)))))


def recorded_statistics(path) -> Preprocess | None:
    """The input statistics recorded with a safetensors weights file (castream's training records them),
    or None: another format, a file without them, or no file (the loader reports that one)."""
    import json
    from pathlib import Path

    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError):
        return None
    if not any(key in metadata for key in RECORDED):
        return None
    try:
        return Preprocess(*(json.loads(metadata[key]) for key in RECORDED))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: its recorded input statistics are invalid ({err})") from None


def input_statistics(
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    normalization: str | None = None,
    checkpoint=None,
    model: str | None = None,
) -> tuple[Preprocess, str]:
    """The one rule for a model's input statistics, with where they come from: explicit ``mean``/``std``
    or a named ``normalization``; else those recorded with the ``checkpoint`` weights; else a timm
    model's ``pretrained_cfg``; else ImageNet's. Explicit statistics that differ from the recorded ones
    are an error naming both: the weights were trained with the recorded ones."""
    if (mean is None) != (std is None):
        raise ValueError("mean and std go together: give both (one value per input channel) or neither")
    if mean is not None and normalization is not None:
        raise ValueError("give either a named normalization or mean/std, not both")
    recorded = recorded_statistics(checkpoint) if checkpoint is not None else None
    if mean is not None or normalization is not None:
        chosen = Preprocess(mean, std) if mean is not None else Preprocess.named(normalization)
        if recorded is not None and chosen != recorded:
            given = "mean/std" if mean is not None else f"normalization {normalization!r}"
            raise ValueError(
                f"{checkpoint} was trained with input statistics mean {recorded.mean} std {recorded.std}, "
                f"but the {given} gives mean {chosen.mean} std {chosen.std}: give the recorded ones, or none"
            )
        return chosen, "given"
    if recorded is not None:
        return recorded, f"recorded with {checkpoint}"
    if model is not None and model.startswith("timm:"):
        cfg = timm_pretrained_cfg(model[5:])
        if cfg is not None and cfg.get("mean"):
            return Preprocess(cfg["mean"], cfg["std"]), f"{model}'s pretrained_cfg"
    return Preprocess.named("imagenet"), "the default (ImageNet)"


def timm_pretrained_cfg(name: str) -> dict | None:
    """A timm model's pretrained configuration (mean, std, input_size), without building or downloading."""
    try:
        import timm
    except ImportError as err:
        raise ImportError("timm models need `pip install castream[timm]`") from err
    cfg = timm.get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else None
