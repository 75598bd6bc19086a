"""Gradient-based methods: one forward and one backward per batch (``g = d y_c / d A``).

Every method is ``h(sum_k w_k A^k)`` (thesis (1.3)) with its own weights; the weight formulas are plain
functions so other methods (SA-CAM) reuse them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._scorer import Scorer
from ..guided import guided_gradient
from ..maps import (
    KERNELS,
    eigen_projection,
    finalize_maps,
    kernel_projection,
    normalized_channel_sum,
)
from ..utils import uncompiled
from .base import SaliencyMethod, check_noise, safe_divide


def gradcam_weights(grads: Tensor) -> Tensor:
    """Grad-CAM, thesis (1.4): ``w_k = GAP(d y_c / d A^k)``."""
    return grads.mean(dim=(2, 3))


def check_eps(eps: float, example: str) -> None:
    """An ``eps`` option: a number in [0, 1) (the peers' 1e-6 or 1e-7; 0 is the paper's formula)."""
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not 0 <= eps < 1:
        raise ValueError(f"eps must be a number in [0, 1), e.g. {example}; got {eps!r}")


def gradcampp_weights(activations: Tensor, grads: Tensor, eps: float = 0.0) -> Tensor:
    """Grad-CAM++ (Chattopadhyay et al., eq. 19; thesis (1.5) is its compressed form).

    With the exponential assumption the higher derivatives are powers of ``g``:
    ``alpha_ij = g_ij^2 / (2 g_ij^2 + sum_ab A_ab g_ij^3)`` (0 where the denominator is 0) and
    ``w_k = sum_ij alpha_ij ReLU(g_ij)``. ``eps > 0`` adds ``eps`` to the denominator and sets alpha to 0
    where ``g = 0``, as pytorch-grad-cam does with 1e-6 (which the seeds used): it changes alpha wherever
    ``g^2`` is not far above ``eps`` (issue 30 measured map changes of up to 0.157 on EfficientNet-Lite0's
    last layer, where 96% of the ``g^2`` are below 1e-6).
    """
    return moments_weights(activations, grads, grads.pow(2), grads.pow(3), eps)


def moments_weights(activations: Tensor, g1: Tensor, g2: Tensor, g3: Tensor, eps: float = 0.0) -> Tensor:
    """Grad-CAM++'s weights from the first three derivative estimates (powers of ``g`` for Grad-CAM++;
    their means over noisy inputs for Smooth Grad-CAM++): ``alpha = g2 / (2 g2 + sum_ab A_ab g3)`` and
    ``w_k = sum_ij alpha_ij ReLU(g1_ij)`` (see :func:`gradcampp_weights` for ``eps``)."""
    denominator = 2 * g2 + activations.sum(dim=(2, 3), keepdim=True) * g3
    alpha = torch.where(g1 != 0, g2 / (denominator + eps), 0.0) if eps else safe_divide(g2, denominator)
    return (alpha * g1.clamp(min=0)).sum(dim=(2, 3))


class GradientMethod(SaliencyMethod):
    """Base of the methods computed from a layer's activations and gradients: one map per layer, several
    layers fused (``fusion``)."""

    multi_layer = True
    cam_family = True
    callable_targets = True

    def compute(self, images: Tensor, targets) -> list[Tensor]:
        acts, grads, _ = self.activations_and_gradients(images, targets)
        return [self.formula(a, g) for a, g in zip(acts, grads)]

    def formula(self, activations: Tensor, grads: Tensor) -> Tensor:
        raise NotImplementedError


class GradCAM(GradientMethod):
    """Grad-CAM (Selvaraju et al.), thesis (1.4): ``ReLU(sum_k GAP(g^k) A^k)``."""

    name = "gradcam"

    def formula(self, activations: Tensor, grads: Tensor) -> Tensor:
        return self.weighted_sum(gradcam_weights(grads), activations).clamp(min=0)


class GradCAMPlusPlus(GradientMethod):
    """Grad-CAM++ (Chattopadhyay et al.), thesis (1.5) in its original closed form; see gradcampp_weights."""

    name = "gradcam++"

    def __init__(self, model, layer=None, *, eps: float = 0.0, **options) -> None:
        """``eps``: added to alpha's denominator (:func:`gradcampp_weights`); 0 (castream's default) is the
        paper's formula, 1e-6 pytorch-grad-cam's, with which the seeds' Grad-CAM++ columns were computed."""
        check_eps(eps, "1e-6")
        super().__init__(model, layer, **options)
        self.eps = float(eps)

    def formula(self, activations: Tensor, grads: Tensor) -> Tensor:
        return self.weighted_sum(gradcampp_weights(activations, grads, self.eps), activations).clamp(min=0)


class SmoothGradCAMPlusPlus(GradientMethod):
    """Smooth Grad-CAM++ (Omeiza et al. 2019): Grad-CAM++ (:func:`moments_weights`) with the derivatives
    ``g``, ``g^2``, ``g^3`` averaged over ``num_samples`` inputs with Gaussian noise of standard deviation
    ``std`` added to the model input (seeded by ``seed``), on the clean image's activations and target.

    TorchCAM 0.5 computes it otherwise in three places (its docstring notes the first): alpha's numerator,
    ``sum_ab A_ab g3_ab`` in place of ``g3_ij sum_ab A_ab``, and ReLU of the last sample's gradient and its
    activations in place of the mean gradient and the clean ones; castream follows the paper."""

    name = "smoothgradcampp"

    def __init__(
        self, model, layer=None, *, num_samples: int = 4, std: float = 0.3, seed: int = 0, **options
    ):
        super().__init__(model, layer, **options)
        self.num_samples, self.std = check_noise(num_samples, std)
        self.seed = seed

    def compute(self, images: Tensor, targets) -> list[Tensor]:
        acts, t, _ = self.activations(images, targets)  # the clean pass needs no gradient
        generator = torch.Generator(device=images.device).manual_seed(self.seed)
        moments = [[torch.zeros_like(a) for _ in range(3)] for a in acts]
        for _ in range(self.num_samples):
            noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
            _, grads, _ = self.activations_and_gradients(images + self.std * noise, t)
            for sums, g in zip(moments, grads):
                for power, total in enumerate(sums, start=1):
                    total += g.pow(power)
        return [
            self.weighted_sum(moments_weights(a, *(m / self.num_samples for m in sums)), a).clamp(min=0)
            for a, sums in zip(acts, moments)
        ]


class XGradCAM(GradientMethod):
    """XGrad-CAM / Axiom-CAM (Fu et al.), thesis (1.8): ``w_k = sum_ij A_ij g_ij / sum_ij A_ij`` (0 when
    the channel sums to 0), then ReLU."""

    name = "xgradcam"

    def formula(self, activations: Tensor, grads: Tensor) -> Tensor:
        weights = safe_divide((activations * grads).sum(dim=(2, 3)), activations.sum(dim=(2, 3)))
        return self.weighted_sum(weights, activations).clamp(min=0)


class HiResCAM(GradientMethod):
    """HiRes-CAM (Draelos & Carin): element-wise ``ReLU(sum_k g^k * A^k)``."""

    name = "hirescam"

    def formula(self, activations: Tensor, grads: Tensor) -> Tensor:
        return self.channel_sum(grads * activations).clamp(min=0)


class GradCAMElementWise(GradientMethod):
    """Grad-CAM element-wise (pytorch-grad-cam): ``ReLU(sum_k ReLU(g^k * A^k))``, HiRes-CAM with the ReLU
    inside the sum."""

    name = "gradcamelementwise"

    def formula(self, activations: Tensor, grads: Tensor) -> Tensor:
        return self.channel_sum((grads * activations).clamp(min=0)).clamp(min=0)


class EigenGradCAM(GradientMethod):
    """Eigen-Grad-CAM (pytorch-grad-cam): EigenCAM of ``g * A``, ``ReLU`` of the first principal component
    of the per-channel products (:func:`castream.maps.eigen_projection`, oriented)."""

    name = "eigengradcam"
    cam_family = False  # already a principal component

    def formula(self, activations: Tensor, grads: Tensor) -> Tensor:
        return eigen_projection(grads * activations).clamp(min=0)


class ShapleyCAM(GradientMethod):
    """ShapleyCAM (Cai et al. 2025, arXiv 2501.06261): Grad-CAM's weights with a second-order term,
    ``w_k = GAP(g^k - 1/2 (H A)^k)``, ``H A`` the Hessian of ``y_c`` w.r.t. the layer times ``A``; it is 0
    (Grad-CAM) where the network after the layer is piecewise linear, e.g. a ResNet's last stage."""

    name = "shapleycam"

    def compute(self, images: Tensor, targets) -> list[Tensor]:
        acts, grads, hvps, _ = self._backward(images, targets, second_order=True)
        return [
            self.weighted_sum((g - 0.5 * h).mean(dim=(2, 3)), a).clamp(min=0)
            for a, g, h in zip(acts, grads, hvps)
        ]


class FinerCAM(GradientMethod):
    """Finer-CAM (Zhang et al. 2025, as pytorch-grad-cam 1.5 computes it): ``base``'s map of a contrastive
    score, ``sum_j p_j (y_c - alpha y_j) / (sum_j p_j + 1e-9)`` over the classes ``j`` whose logits are
    nearest the target's (``comparisons``: their ranks, 1 = the nearest), ``p`` the softmax probabilities.
    It explains what sets class c apart from the classes it is most confused with."""

    name = "finercam"
    callable_targets = False  # its score compares class logits
    BASES = ("gradcam", "hirescam", "xgradcam", "gradcamelementwise")

    def __init__(
        self,
        model,
        layer=None,
        *,
        alpha: float = 1.0,
        comparisons: tuple[int, ...] = (1, 2, 3),
        base: str = "gradcam",
        **options,
    ) -> None:
        if base not in self.BASES:
            raise ValueError(f"base must be one of {self.BASES}, got {base!r}")
        ranks = list(comparisons)
        if not ranks or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ranks):
            raise ValueError(f"comparisons must be ranks >= 1 of the nearest classes, got {comparisons!r}")
        super().__init__(model, layer, **options)
        self.alpha, self.comparisons, self.base = float(alpha), tuple(ranks), base

    def formula(self, activations: Tensor, grads: Tensor) -> Tensor:
        return _BASES[self.base].formula(self, activations, grads)

    def objective(self, logits: Tensor, targets: Tensor) -> Tensor:
        logits = logits.float()
        own = logits.gather(1, targets[:, None])
        distance = (logits - own).abs().scatter(1, targets[:, None], -1.0)  # the target ranks first
        ranks = [r for r in self.comparisons if r < logits.shape[1]]
        if not ranks:
            raise ValueError(f"FinerCAM needs a class to compare with; the model has {logits.shape[1]}")
        others = distance.argsort(dim=1)[:, ranks]
        p = logits.softmax(dim=1).gather(1, others)
        return (p * (own - self.alpha * logits.gather(1, others))).sum(1) / (p.sum(1) + 1e-9)


class LayerCAM(GradientMethod):
    """Layer-CAM (Jiang et al.): ``ReLU(sum_k ReLU(g^k) * A^k)`` per layer.

    With several layers (``layer=[...]``) each layer's map is min-max normalized, brought to the finest
    layer's resolution and the maps are averaged (thesis §1.3.2: "averaging the up-sampled attribution
    maps obtained at different depths"): ``fusion="finest"`` by default, ``"input"`` as pytorch-grad-cam.
    """

    name = "layercam"
    default_fusion = "finest"

    def formula(self, activations: Tensor, grads: Tensor) -> Tensor:
        return self.channel_sum(grads.clamp(min=0) * activations).clamp(min=0)


class EigenCAM(SaliencyMethod):
    """EigenCAM (Muhammad & Yeasin 2020): ``ReLU`` of the first principal component of the layer's
    activations (no gradient, no class: the same map for every target), oriented as
    :func:`castream.maps.eigen_projection`."""

    name = "eigencam"
    multi_layer = True

    def compute(self, images: Tensor, targets) -> list[Tensor]:
        acts, _, _ = self.activations(images, targets)
        return [eigen_projection(a).clamp(min=0) for a in acts]


class KPCACAM(SaliencyMethod):
    """KPCA-CAM (Karmani et al. 2024): EigenCAM with kernel PCA (:func:`castream.maps.kernel_projection`:
    ``kernel`` among linear, poly, rbf, sigmoid (default), cosine; ``gamma`` default 1 / channels)."""

    name = "kpcacam"
    multi_layer = True

    def __init__(self, model, layer=None, *, kernel: str = "sigmoid", gamma: float | None = None, **options):
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        super().__init__(model, layer, **options)
        self.kernel, self.gamma = kernel, gamma

    def compute(self, images: Tensor, targets) -> list[Tensor]:
        acts, _, _ = self.activations(images, targets)
        return [kernel_projection(a, self.kernel, self.gamma).clamp(min=0) for a in acts]


class FEM(SaliencyMethod):
    """FEM, the feature explanation method (Fuad et al. 2020): ``w_k`` = the fraction of positions where
    ``A^k`` exceeds its mean plus ``k`` standard deviations (population std over the positions), then
    ``ReLU(sum_k w_k A^k)``; no gradient, no class."""

    name = "fem"
    multi_layer = True
    cam_family = True

    def __init__(self, model, layer=None, *, k: float = 2.0, **options) -> None:
        super().__init__(model, layer, **options)
        self.k = float(k)

    def compute(self, images: Tensor, targets) -> list[Tensor]:
        acts, _, _ = self.activations(images, targets)
        out = []
        for a in acts:
            flat = a.flatten(2)
            threshold = flat.mean(-1) + self.k * flat.std(-1, unbiased=False)
            weights = (flat > threshold[..., None]).to(a.dtype).mean(-1)
            out.append(self.weighted_sum(weights, a).clamp(min=0))
        return out


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


_BASES = {cls.name: cls for cls in (GradCAM, HiResCAM, XGradCAM, GradCAMElementWise)}


class FullGrad(SaliencyMethod):
    """FullGrad (Srinivas & Fleuret 2019), as pytorch-grad-cam computes it: the input-gradient term
    ``|x * d y / d x|`` plus, for every ``nn.Conv2d`` and ``nn.BatchNorm2d`` with a bias, the bias-gradient
    term ``|b * d y / d z|`` at its output ``z`` (a batch norm's effective bias ``beta - mu gamma /
    sqrt(var + eps)``); each channel of each term min-max normalized at its own resolution, resized to
    the input and summed. It uses every such layer, so it takes no ``layer``; its map is at input
    resolution whatever ``upsample`` says. ``eps``: added to each channel's range, as pytorch-grad-cam's
    1e-7 (which shrinks channels whose range is near it); 0, the default, is plain min-max."""

    name = "fullgrad"
    multi_layer = True
    uses_layer = False  # no layer of the user's: its own, every biased convolution and batch norm

    def __init__(self, model, layer=None, *, eps: float = 0.0, **options) -> None:
        if layer is not None:
            raise ValueError("FullGrad reads every convolution and batch norm with a bias; it takes no layer")
        check_eps(eps, "1e-7")
        self.eps = float(eps)
        found = [
            name
            for name, m in uncompiled(model.model if isinstance(model, Scorer) else model).named_modules()
            if type(m) in (nn.Conv2d, nn.BatchNorm2d) and m.bias is not None
        ]
        if not found:
            raise ValueError(
                "FullGrad needs nn.Conv2d or nn.BatchNorm2d layers with a bias; the model has none"
            )
        super().__init__(model, **options)
        self.layers = self._resolve_layers(found)

    @staticmethod
    def _bias(module: nn.Module) -> Tensor:
        if isinstance(module, nn.BatchNorm2d):
            scale = module.weight / torch.sqrt(module.running_var + module.eps)
            return (module.bias - module.running_mean * scale).detach()
        return module.bias.detach()

    def compute(self, images: Tensor, targets) -> Tensor:
        size = tuple(images.shape[-2:])
        with torch.enable_grad():
            x = images.detach().requires_grad_(True)
            store, logits = self._run(x, track_grad=True)
            t = self.targets(targets, logits)
            leaves = [store[name] for name, _ in self.layers]
            grads = torch.autograd.grad(self.objective(logits, t).sum(), [x, *leaves], allow_unused=True)
        total = normalized_channel_sum((x.detach() * grads[0]).abs_(), self.eps)
        for (_, module), grad in zip(self.layers, grads[1:]):
            if grad is not None:
                bias = self._bias(module)[None, :, None, None]
                term = normalized_channel_sum((bias * grad).abs_(), self.eps)
                total = total + finalize_maps(term, size, normalize=False)  # bilinear resizing is linear:
                # the channels' sum resized once is the sum of the resized channels (one resize, not C)
        return total
