"""Opti-CAM (Zhang et al.), thesis (2.4)-(2.7), with the ablation variants (2.9)-(2.12)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._precision import at_least_float32, full_precision, reduced
from .._scorer import target_score
from ..maps import normalize_maps, upsample_maps
from ..preprocess import Preprocess, resolve_preprocess
from .base import SaliencyMethod, combine


def _normalize_max(maps: Tensor) -> Tensor:
    peak = maps.flatten(-2).amax(-1)[..., None, None]
    return torch.where(
        peak > 0, maps / torch.where(peak > 0, peak, torch.ones_like(peak)), torch.zeros_like(maps)
    )


NORMALIZATIONS = {
    "range": normalize_maps,  # (2.9), the default, as Score-CAM's (1.7)
    "max": _normalize_max,  # (2.10)
    "sigmoid": torch.sigmoid,  # (2.11), element-wise
}


class OptiCAM(SaliencyMethod):
    """Opti-CAM: the convex combination of feature maps that maximizes the classifier's score of the
    image masked by it.

    ``S(x; u) = sum_k softmax(u)_k A^k`` (2.4), ``u* = argmax_u F(x; u)`` (2.5) with
    ``F = g_c(f(x ⊙ n(up(S(x; u)))))`` (2.6): objective ``"mask"`` is the class logit of the masked image;
    ``"diff"`` is ``-|y_c(x) - y_c(masked)|`` (2.12). Normalization ``n``: ``"range"`` (2.9), ``"max"``
    (2.10) or ``"sigmoid"`` (2.11). The map is ``S(x; u*)`` (2.7), h = identity.

    Optimization (thesis §2.5.1): Adam, lr 0.1, at most ``max_iter`` = 100 iterations, ``u`` starts
    uniform (zeros, equal weights). Every image of the batch is optimized at once with its own variable
    and element-wise Adam state, and stops on its own when its loss changes by less than ``tol`` (1e-10)
    between iterations; stopped images leave the batch. The feature maps ``A`` of the clean image are
    computed once. After a call, ``iterations`` holds the number of updates of each image.

    Under ``torch.autocast`` only the model's forwards run in reduced precision; ``u``, Adam, the mask and
    its normalization stay in float32. A bf16/fp16 logit cannot resolve a change of ``tol``, so with such
    logits every image runs ``max_iter`` iterations.

    ``relu_features=True`` applies a ReLU to the feature maps first, as the official Opti-CAM code does;
    it only matters where features can be negative (e.g. ViT tokens after LayerNorm; CNN features after a
    ReLU are unchanged). Off by default: the thesis' (2.4) combines the raw feature maps.
    """

    name = "opticam"
    cam_family = True
    masks_input = True
    OBJECTIVES = ("mask", "diff")

    def __init__(
        self,
        model,
        layer=None,
        *,
        preprocess: Preprocess | None = None,
        objective: str = "mask",
        normalization: str = "range",
        lr: float = 0.1,
        max_iter: int = 100,
        tol: float = 1e-10,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        relu_features: bool = False,
        **options,
    ) -> None:
        if objective not in self.OBJECTIVES:
            raise ValueError(f"objective must be one of {self.OBJECTIVES}, got {objective!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {tuple(NORMALIZATIONS)}, got {normalization!r}")
        if max_iter < 0 or lr <= 0:
            raise ValueError(f"need max_iter >= 0 and lr > 0, got {max_iter} and {lr}")
        super().__init__(model, layer, **options)
        self.preprocess = resolve_preprocess(model, preprocess, type(self).__name__)
        self.objective, self.normalization = objective, normalization
        self.lr, self.max_iter, self.tol, self.betas, self.eps = lr, max_iter, tol, betas, eps
        self.relu_features = bool(relu_features)
        self.iterations: Tensor | None = None

    def loss(self, u: Tensor, acts: Tensor, images: Tensor, targets: Tensor, clean: Tensor) -> Tensor:
        """Per-image loss ``-F(x; u)`` (B,) to minimize. The mask is built in full precision; only the
        model's forward runs under the caller's autocast."""
        with full_precision():
            saliency = combine(u.softmax(dim=1), acts)
            mask = NORMALIZATIONS[self.normalization](upsample_maps(saliency, tuple(images.shape[-2:])))
            masked = self.preprocess.mask(images, mask)
        score = target_score(self.logits(masked), targets).to(u.dtype)
        return -score if self.objective == "mask" else (clean - score).abs()

    def compute(self, images: Tensor, targets) -> Tensor:
        acts, t, logits = self.activations(images, targets)
        a = at_least_float32(acts[0].relu() if self.relu_features else acts[0])
        dtype = a.dtype
        clean = target_score(logits, t).to(dtype)
        # a logit in bf16/fp16 (autocast) moves in steps far above tol: an unchanged loss is rounding, not
        # convergence, so the stopping rule only applies to full-precision logits
        stops = not reduced(logits)
        u = torch.zeros(a.shape[:2], device=a.device, dtype=dtype)
        m1, m2 = torch.zeros_like(u), torch.zeros_like(u)
        previous = torch.full(u.shape[:1], float("nan"), device=u.device, dtype=dtype)
        self.iterations = torch.zeros(u.shape[0], dtype=torch.long, device=u.device)
        active = torch.arange(u.shape[0], device=u.device)
        beta1, beta2 = self.betas
        with self._bar(self.max_iter, "iteration") as bar:
            for step in range(1, self.max_iter + 1):
                bar.update()
                with torch.enable_grad():
                    variable = u[active].requires_grad_(True)
                    loss = self.loss(variable, a[active], images[active], t[active], clean[active])
                    (grad,) = torch.autograd.grad(loss.sum(), variable)
                loss = loss.detach().to(dtype)
                running = (
                    ~((loss - previous[active]).abs() < self.tol) if stops else torch.ones_like(loss).bool()
                )
                previous[active] = loss
                active, grad = active[running], grad[running]
                if active.numel() == 0:
                    break
                # Adam, element-wise (hence independent per image), as torch.optim.Adam with default settings.
                m1[active] = beta1 * m1[active] + (1 - beta1) * grad
                m2[active] = beta2 * m2[active] + (1 - beta2) * grad * grad
                denom = (m2[active] / (1 - beta2**step)).sqrt() + self.eps
                u[active] -= self.lr * (m1[active] / (1 - beta1**step)) / denom
                self.iterations[active] += 1
        return self.weighted_sum(u.softmax(dim=1), a)
