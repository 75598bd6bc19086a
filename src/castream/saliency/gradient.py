"""Gradient-based methods: one forward and one backward per batch (``g = d y_c / d A``).

Every method is ``h(sum_k w_k A^k)`` (thesis (1.3)) with its own weights; the weight formulas are plain
functions so other methods (SA-CAM) reuse them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..guided import guided_gradient
from ..maps import finalize_maps
from .base import SaliencyMethod, combine, safe_divide


def gradcam_weights(grads: Tensor) -> Tensor:
    """Grad-CAM, thesis (1.4): ``w_k = GAP(d y_c / d A^k)``."""
    return grads.mean(dim=(2, 3))


def gradcampp_weights(activations: Tensor, grads: Tensor, eps: float = 0.0) -> Tensor:
    """Grad-CAM++ (Chattopadhyay et al., eq. 19; thesis (1.5) is its compressed form).

    With the exponential assumption the higher derivatives are powers of ``g``:
    ``alpha_ij = g_ij^2 / (2 g_ij^2 + sum_ab A_ab g_ij^3)`` (0 where the denominator is 0) and
    ``w_k = sum_ij alpha_ij ReLU(g_ij)``. ``eps > 0`` adds ``eps`` to the denominator and sets alpha to 0
    where ``g = 0``, as pytorch-grad-cam does with 1e-6 (which the seeds used): it changes alpha wherever
    ``g^2`` is not far above ``eps`` (issue 30 measured map changes of up to 0.157 on EfficientNet-Lite0's
    last layer, where 96% of the ``g^2`` are below 1e-6).
    """
    g2 = grads.pow(2)
    denominator = 2 * g2 + activations.sum(dim=(2, 3), keepdim=True) * grads.pow(3)
    alpha = torch.where(grads != 0, g2 / (denominator + eps), 0.0) if eps else safe_divide(g2, denominator)
    return (alpha * grads.clamp(min=0)).sum(dim=(2, 3))


class GradientMethod(SaliencyMethod):
    """Base of the methods computed from one layer's activations and gradients."""

    def compute(self, images: Tensor, targets) -> Tensor:
        acts, grads, _ = self.activations_and_gradients(images, targets)
        return self.formula(acts[0], grads[0])

    def formula(self, activations: Tensor, grads: Tensor) -> Tensor:
        raise NotImplementedError


class GradCAM(GradientMethod):
    """Grad-CAM (Selvaraju et al.), thesis (1.4): ``ReLU(sum_k GAP(g^k) A^k)``."""

    name = "gradcam"

    def formula(self, activations: Tensor, grads: Tensor) -> Tensor:
        return combine(gradcam_weights(grads), activations).clamp(min=0)


class GradCAMPlusPlus(GradientMethod):
    """Grad-CAM++ (Chattopadhyay et al.), thesis (1.5) in its original closed form; see gradcampp_weights."""

    name = "gradcam++"

    def __init__(self, model, layer=None, *, eps: float = 0.0, **options) -> None:
        """``eps``: added to alpha's denominator (:func:`gradcampp_weights`); 0 (castream's default) is the
        paper's formula, 1e-6 pytorch-grad-cam's, with which the seeds' Grad-CAM++ columns were computed."""
        if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 <= eps < 1:
            raise ValueError(f"eps must be a number in [0, 1), e.g. 1e-6; got {eps!r}")
        super().__init__(model, layer, **options)
        self.eps = float(eps)

    def formula(self, activations: Tensor, grads: Tensor) -> Tensor:
        return combine(gradcampp_weights(activations, grads, self.eps), activations).clamp(min=0)


class XGradCAM(GradientMethod):
    """XGrad-CAM / Axiom-CAM (Fu et al.), thesis (1.8): ``w_k = sum_ij A_ij g_ij / sum_ij A_ij`` (0 when
    the channel sums to 0), then ReLU."""

    name = "xgradcam"

    def formula(self, activations: Tensor, grads: Tensor) -> Tensor:
        weights = safe_divide((activations * grads).sum(dim=(2, 3)), activations.sum(dim=(2, 3)))
        return combine(weights, activations).clamp(min=0)


class HiResCAM(GradientMethod):
    """HiRes-CAM (Draelos & Carin): element-wise ``ReLU(sum_k g^k * A^k)``."""

    name = "hirescam"

    def formula(self, activations: Tensor, grads: Tensor) -> Tensor:
        return (grads * activations).sum(dim=1).clamp(min=0)


class LayerCAM(SaliencyMethod):
    """Layer-CAM (Jiang et al.): ``ReLU(sum_k ReLU(g^k) * A^k)`` per layer.

    With several layers (``layer=[...]``) each layer's map is min-max normalized, brought to the finest
    layer's resolution and the maps are averaged (thesis §1.3.2: "averaging the up-sampled attribution
    maps obtained at different depths").
    """

    name = "layercam"
    multi_layer = True

    def compute(self, images: Tensor, targets) -> Tensor:
        acts, grads, _ = self.activations_and_gradients(images, targets)
        maps = [(g.clamp(min=0) * a).sum(dim=1).clamp(min=0) for a, g in zip(acts, grads)]
        if len(maps) == 1:
            return maps[0]
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        return torch.stack([finalize_maps(m, tuple(size), normalize=True) for m in maps]).mean(dim=0)


class GuidedBackprop(SaliencyMethod):
    """Guided backpropagation (Springenberg et al.): the input gradient of the target logit where every
    ReLU-type activation passes only positive gradients through positive inputs (see castream.guided).

    The map is ``reduce`` over colour channels of the gradient image: ``"max-abs"`` (default, as in
    Simonyan et al.), ``"abs-sum"`` or ``"norm"``. :meth:`gradient` returns the raw (B, C, H, W) image.
    """

    name = "guidedbackprop"
    uses_layer = False
    REDUCTIONS = ("max-abs", "abs-sum", "norm")

    def __init__(self, model, layer=None, *, reduce: str = "max-abs", **options) -> None:
        if layer is not None:
            raise ValueError("guided backpropagation explains the input; it takes no layer")
        if reduce not in self.REDUCTIONS:
            raise ValueError(f"reduce must be one of {self.REDUCTIONS}, got {reduce!r}")
        super().__init__(model, **options)
        self.reduce = reduce

    def gradient(self, images: Tensor, targets=None) -> Tensor:
        """The guided input gradient ``(B, C, H, W)`` of the target logits."""
        with self.session():
            return guided_gradient(self.logits, images, lambda logits: self.targets(targets, logits))

    def compute(self, images: Tensor, targets) -> Tensor:
        grad = self.gradient(images, targets)
        if self.reduce == "max-abs":
            return grad.abs().amax(dim=1)
        if self.reduce == "abs-sum":
            return grad.abs().sum(dim=1)
        return grad.norm(dim=1)
