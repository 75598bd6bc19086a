"""Forward-only channel scoring: Score-CAM, Ablation-CAM and SA-CAM.

Each (image, channel) pair needs its own forward pass. Pairs are flattened and evaluated in chunks of
``batch_size`` images per forward under ``torch.no_grad()``; no per-image Python loop, no autograd graph.
Degenerate channels are skipped exactly: a channel whose map is constant has an all-zero normalized mask
(thesis (2.2) defines n(0) = 0), so its masked inputs depend on the image only and are evaluated once per
image; an all-zero channel is unchanged by ablation, so its Ablation-CAM weight is exactly 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import ClassVar

import torch
from torch import Tensor

from .._scorer import target_score
from ..maps import finalize_maps, normalize_maps
from ..preprocess import Preprocess, resolve_preprocess
from ..utils import check_int
from ._suffix import reproduces, split_after
from .base import SaliencyMethod, check_noise, safe_divide
from .gradient import gradcam_weights, gradcampp_weights


def pair_chunks(selected: Tensor, chunk: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Chunks of the selected (image, channel) pairs of a (B, K) boolean tensor: (flat index, b, k)."""
    channels = selected.shape[1]
    indices = selected.flatten().nonzero().squeeze(1)
    if indices.numel() == 0:  # split() of an empty tensor yields one empty chunk: no forward of 0 images
        return
    for flat in indices.split(max(1, chunk)):
        yield flat, flat // channels, flat % channels


class MaskingMethod(SaliencyMethod):
    """A method that forwards masked copies of the images (pixel-space masking, PROTOCOL.md)."""

    masks_input = True
    cam_family = True
    inputs_per_pair = 1

    def __init__(
        self,
        model,
        layer=None,
        *,
        preprocess: Preprocess | None = None,
        batch_size: int = 128,
        normalize_first: bool = False,
        **options,
    ) -> None:
        """``normalize_first``: each channel's mask is min-max normalized at feature resolution and then
        upsampled, ``up(n(A^k))`` as TorchCAM does, instead of thesis (1.7)'s ``n(up(A^k))`` (also
        pytorch-grad-cam's); bilinear upsampling does not keep a map's extremes, so the two differ by up
        to ~1e-3 in the final map."""
        check_int("batch_size", batch_size)
        if not isinstance(normalize_first, bool):
            raise TypeError(f"normalize_first must be True or False, got {normalize_first!r}")
        super().__init__(model, layer, **options)
        self.preprocess = resolve_preprocess(model, preprocess, type(self).__name__)
        self.batch_size, self.normalize_first = batch_size, normalize_first

    def masked_scores(
        self,
        images: Tensor,
        activations: Tensor,
        targets: Tensor,
        make_inputs: Callable[[Tensor, Tensor], list[Tensor]],
        score: Callable[[Tensor, Tensor], Tensor],
    ) -> list[Tensor]:
        """Score every channel's masked inputs: ``score(logits, targets)`` of each input kind -> (B, K) each.

        For a pair (b, k) the mask is ``n(up(A_b^k))`` (thesis (1.7)) and ``make_inputs(b, masks)`` returns
        the ``inputs_per_pair`` image batches to score; all kinds of a chunk go through one forward.
        """
        batch, channels = activations.shape[:2]
        size = tuple(images.shape[-2:])
        flat_maps = activations.flatten(0, 1)
        spread = activations.flatten(2)
        constant = spread.amax(-1) == spread.amin(-1)
        kinds = self.inputs_per_pair
        out = [activations.new_zeros(batch * channels, dtype=torch.float32) for _ in range(kinds)]

        def evaluate(b: Tensor, masks: Tensor) -> list[Tensor]:
            inputs = torch.cat(make_inputs(b, masks))
            values = score(self.logits(inputs), targets[b].repeat(kinds)).float()
            return list(values.chunk(kinds))

        images_with_constant = constant.any(dim=1)
        total = int((~constant).sum()) + int(images_with_constant.sum())
        with torch.no_grad(), self._bar(total * kinds, "image") as bar:
            for flat, b, _ in pair_chunks(~constant, max(1, self.batch_size // kinds)):
                chosen = flat_maps[flat]
                masks = (
                    finalize_maps(normalize_maps(chosen), size, normalize=False)
                    if self.normalize_first
                    else finalize_maps(chosen, size, normalize=True)
                )
                for o, values in zip(out, evaluate(b, masks)):
                    o[flat] = values
                bar.update(len(flat) * kinds)
            for _, b, _ in pair_chunks(images_with_constant[:, None], max(1, self.batch_size // kinds)):
                values = evaluate(b, images.new_zeros(len(b), *size))
                for o, v in zip(out, values):
                    grid = o.view(batch, channels)
                    grid[b] = torch.where(constant[b], v[:, None], grid[b])
                bar.update(len(b) * kinds)
        return [o.view(batch, channels) for o in out]


MASK_BASELINES = ("black", "mean")


def check_baseline(baseline: str) -> str:
    if baseline not in MASK_BASELINES:
        raise ValueError(f"baseline must be one of {MASK_BASELINES}, got {baseline!r}")
    return baseline


def target_logit(logits: Tensor, targets: Tensor) -> Tensor:
    return target_score(logits, targets, "logit")


def target_probability(logits: Tensor, targets: Tensor) -> Tensor:
    return target_score(logits, targets, "softmax")


class ScoreCAM(MaskingMethod):
    """Score-CAM (Wang et al.), thesis (1.6)-(1.7).

    ``w = softmax_k(f(x ⊙ n(up(A^k)))_c)`` and map ``ReLU(sum_k w_k A^k)``. With ``score="logit"`` (default,
    PROTOCOL.md) ``f`` returns logits as in thesis (1.6); ``score="probability"`` uses the class probability
    as in the original paper. The baseline term ``f(x_b)_c`` of (1.6) is constant over channels and cancels
    under the softmax. ``score="raw-probability"`` is the weighting of the authors' CA-Stream code: the class
    probabilities themselves are the channel weights, without the softmax over channels.

    ``baseline``: what the masked-out pixels become, ``x_b`` of (1.6): ``"black"`` (castream's default,
    pixel value 0) or ``"mean"``, the dataset mean colour, which is what pytorch-grad-cam's Score-CAM does
    (it multiplies the *normalized* tensor by the mask) and what SA-CAM's eq. (4) writes; the seeds'
    Score-CAM columns (thesis §2.5.3, SA-CAM) were computed with pytorch-grad-cam, so ``"mean"``
    reproduces their protocol.
    """

    name = "scorecam"
    SCORES: ClassVar[dict] = {
        "logit": target_logit,
        "probability": target_probability,
        "raw-probability": target_probability,
    }

    def __init__(
        self,
        model,
        layer=None,
        *,
        score: str = "logit",
        baseline: str = "black",
        preprocess: Preprocess | None = None,
        batch_size: int = 128,
        **options,
    ) -> None:
        """``preprocess``: the model's input statistics (else those it declares); ``batch_size``: masked
        images per forward; ``options``: ``output``, ``forward_kwargs``, ``reshape`` (SaliencyMethod)."""
        if score not in self.SCORES:
            raise ValueError(f"score must be one of {tuple(self.SCORES)}, got {score!r}")
        super().__init__(model, layer, preprocess=preprocess, batch_size=batch_size, **options)
        self.score, self.baseline = score, check_baseline(baseline)

    def compute(self, images: Tensor, targets) -> Tensor:
        acts, t, _ = self.activations(images, targets)
        base = self.preprocess.baseline(images, self.baseline)
        samples = [
            self.masked_scores(
                images,
                acts[0],
                t,
                lambda b, m, change=change: [self.preprocess.mask(images[b], change(m), base[b])],
                self.SCORES[self.score],
            )[0]
            for change in self.mask_samples(images.device)
        ]
        scores = samples[0] if len(samples) == 1 else torch.stack(samples).mean(dim=0)
        weights = scores if self.score == "raw-probability" else scores.softmax(dim=1)
        return self.weighted_sum(weights, acts[0]).clamp(min=0)

    def mask_samples(self, device: torch.device) -> list[Callable[[Tensor], Tensor]]:
        """The changes of each channel's mask whose scores are averaged: Score-CAM's one is none."""
        return [lambda masks: masks]


class SSCAM(ScoreCAM):
    """SS-CAM (Wang et al. 2020, arXiv 2006.14255): Score-CAM whose channel scores are the mean over
    ``num_samples`` masks with Gaussian noise of standard deviation ``std`` added to the normalized,
    upsampled mask, ``n(up(A^k)) + delta`` (TorchCAM's defaults: 35 samples, std 2.0; seeded by ``seed``).

    The noise is drawn chunk by chunk from castream's generator (memory stays one chunk, where TorchCAM
    draws (B, K, H, W) at once), so the draws are not TorchCAM's; the channels with a constant map share
    one noisy all-zero mask per image and sample. Score-CAM's options (``score``, ``baseline``) apply."""

    name = "sscam"

    def __init__(
        self, model, layer=None, *, num_samples: int = 35, std: float = 2.0, seed: int = 0, **options
    ):
        super().__init__(model, layer, **options)
        self.num_samples, self.std = check_noise(num_samples, std)
        self.seed = seed

    def mask_samples(self, device: torch.device) -> list[Callable[[Tensor], Tensor]]:
        generator = torch.Generator(device=device).manual_seed(self.seed)

        def noisy(masks: Tensor) -> Tensor:
            noise = torch.randn(masks.shape, generator=generator, device=masks.device, dtype=masks.dtype)
            return masks + self.std * noise

        return [noisy] * self.num_samples


class ISCAM(ScoreCAM):
    """IS-CAM (Naidu et al. 2020, arXiv 2010.03023): Score-CAM whose channel scores are the mean over
    ``num_samples`` steps of the masks scaled by ``c_i = sum_{j<=i} j / N`` (i = 1..N), as TorchCAM 0.5
    integrates them. Score-CAM's options (``score``, ``baseline``) apply."""

    name = "iscam"

    def __init__(self, model, layer=None, *, num_samples: int = 10, **options) -> None:
        check_int("num_samples", num_samples)
        super().__init__(model, layer, **options)
        self.num_samples = num_samples

    def mask_samples(self, device: torch.device) -> list[Callable[[Tensor], Tensor]]:
        n = self.num_samples
        coefficients = [sum(j / n for j in range(1, i + 1)) for i in range(1, n + 1)]
        return [lambda masks, c=c: c * masks for c in coefficients]


class AblationCAM(SaliencyMethod):
    """Ablation-CAM (Desai & Ramaswamy), thesis (1.9): ``w_k = (y_c - y_c^k) / y_c`` where ``y_c^k`` is the
    class logit with channel k of the layer set to zero, then ``ReLU(sum_k w_k A^k)`` (0 when y_c = 0).

    Ablating a channel changes nothing before the layer, so only the part of the model after it runs on the
    ablated copies, ``batch_size`` at a time: the model is cut after the layer with ``torch.fx``
    (:mod:`castream.saliency._suffix`; for a ResNet's last stage, the pooling and the head), once per
    method, and the cut is used only when it reproduces the clean logits. A model that does not trace
    (or ``suffix=False``) runs the whole network per ablated copy with the layer's output replaced, which
    is exact for any model; both give the same maps (to float rounding).

    The ablated value is the paper's 0 on every layer. pytorch-grad-cam writes ``min(A) - 1e7`` instead
    where the layer's minimum is not 0 (a signed layer): its maps then differ (up to 0.96 on
    EfficientNet-Lite0's ``_blocks.15._bn2``); after a ReLU both agree (docs/methods.md).
    """

    name = "ablationcam"
    cam_family = True

    def __init__(self, model, layer=None, *, batch_size: int = 128, suffix: bool = True, **options) -> None:
        check_int("batch_size", batch_size)
        if not isinstance(suffix, bool):
            raise TypeError(f"suffix must be True or False, got {suffix!r}")
        super().__init__(model, layer, **options)
        self.batch_size, self.use_suffix = batch_size, suffix
        self._split: list = []  # the traced suffix, built on first use (None: the model does not trace)
        if self.reshape is not None and not hasattr(self.reshape, "inverse"):
            raise ValueError("Ablation-CAM on a token layer needs reshape=True (or a reshape with .inverse)")

    def _suffix(self, images: Tensor, maps: Tensor, logits: Tensor):
        """The traced part after the layer, primed with ``images``, or None (see the class docstring)."""
        if not self.use_suffix:
            return None
        if not self._split:
            self._split.append(split_after(self.model, self.layers[0][0], self.forward_kwargs))
        suffix = self._split[0]
        if suffix is None:
            return None
        with torch.no_grad():
            raw, _ = suffix.record(images)
            if not suffix.batch_values_only():
                return None
            index = torch.arange(len(images), device=images.device)
            found = self._select(suffix(self._replacement(maps, raw), index))
        return suffix if reproduces(logits, found) else None

    def _replacement(self, ablated: Tensor, raw: Tensor) -> Tensor:
        """The layer's output carrying the (ablated) maps, in the layer's own layout."""
        if self.reshape is not None:
            return self.reshape.inverse(ablated, raw).to(raw.dtype)
        return ablated.to(raw.dtype)

    def _ablated_logits(self, images: Tensor, maps: Tensor, suffix, b: Tensor, k: Tensor) -> Tensor:
        """The selected logits with channel ``k[i]`` of the layer zeroed for image ``b[i]``: in the layer's
        own output through the suffix (which may start after its channel-wise pooling), in the reshaped
        maps through the suffix, or through the whole model (no suffix)."""
        if suffix is not None and self.reshape is None:
            return self._select(suffix.ablate(b, k))
        ablated = maps[b].clone()
        ablated[torch.arange(len(b)), k] = 0
        if suffix is not None:
            return self._select(suffix(self._replacement(ablated, suffix.layer_output(b)), b))
        replace = {self.layers[0][0]: lambda out: self._replacement(ablated, out)}
        return self._run(images[b], track_grad=False, replace=replace)[1]

    def compute(self, images: Tensor, targets) -> Tensor:
        acts, t, logits = self.activations(images, targets)
        maps = acts[0]
        y = target_logit(logits, t).float()
        drop = torch.zeros(maps.shape[:2], device=maps.device)
        suffix = self._suffix(images, maps, logits)
        selected = maps.flatten(2).ne(0).any(-1)
        with torch.no_grad(), self._bar(int(selected.sum()), "image") as bar:
            for flat, b, k in pair_chunks(selected, self.batch_size):
                ablated_logits = self._ablated_logits(images, maps, suffix, b, k)
                drop.view(-1)[flat] = y[b] - target_logit(ablated_logits, t[b]).float()
                bar.update(len(flat))
        return self.weighted_sum(safe_divide(drop, y[:, None]), maps).clamp(min=0)


class SACAM(MaskingMethod):
    """SA-CAM (Liang, Li & Jiang), SA-CAM paper eqs. (9)-(13) and Algorithm 2, as tensors.

    For each channel k with mask ``M_k = n(up(A^k))`` (Algorithm 2 lines 5-7):

    - key-area input (Algorithm 1, KAE): the masked image ``x ⊙ M_k`` restricted to the key area
      ``M_k > threshold``, everything else black. The paper thresholds one colour channel of an RGB heat
      map rendering; here the threshold applies to the normalized mask itself (default 0.5).
    - perturbed input (eq. (13)) ``M_k ⊙ x + (1 - M_k) ⊙ baseline`` with ``perturbation`` = ``"constant"``
      (the normalization mean colour ``μ0``), ``"noise"`` (uniform pixel noise, seeded) or ``"blur"``
      (default, Algorithm 2 line 10). For blur, the spatially varying blur of eq. (13) is approximated by
      this blend with a Gaussian blur of maximal ``sigma`` (``sigma0``, default 10 as in Fong & Vedaldi).
    - restricted mask-based score (eq. (12)): ``S_k = f(U_seg) * (1 + f(U_pert))`` with ``f`` the class
      probability (pixel-space masking, PROTOCOL.md).

    Weights (eq. (10), Algorithm 2 lines 11-12): ``w = softmax_k(S + λ1 K + λ2 Q)`` with ``K`` the mean
    gradient (Grad-CAM weights) and ``Q`` the Grad-CAM++ weights, so the second-order factor of eq. (11)
    is the exponential closed form. Map (line 13): ``ReLU(sum_k w_k A^k)``. The paper gives no values for
    λ1, λ2; both default to 1.
    """

    name = "sacam"
    inputs_per_pair = 2
    PERTURBATIONS = ("constant", "noise", "blur")

    def __init__(
        self,
        model,
        layer=None,
        *,
        lambda1: float = 1.0,
        lambda2: float = 1.0,
        perturbation: str = "blur",
        threshold: float = 0.5,
        sigma0: float = 10.0,
        seed: int = 0,
        baseline: str = "black",
        preprocess: Preprocess | None = None,
        batch_size: int = 128,
        **options,
    ) -> None:
        """``baseline``: what the key-area input's masked-out pixels become, as :class:`ScoreCAM`'s
        (``"mean"``: eq. (4)'s, pytorch-grad-cam's)."""
        if perturbation not in self.PERTURBATIONS:
            raise ValueError(f"perturbation must be one of {self.PERTURBATIONS}, got {perturbation!r}")
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold must lie in [0, 1), got {threshold}")
        super().__init__(model, layer, preprocess=preprocess, batch_size=batch_size, **options)
        self.lambda1, self.lambda2 = float(lambda1), float(lambda2)
        self.perturbation, self.threshold, self.sigma0, self.seed = perturbation, threshold, sigma0, seed
        self.baseline = check_baseline(baseline)

    def _baselines(self, images: Tensor) -> Tensor:
        if self.perturbation == "constant":
            return self.preprocess.baseline(images, "mean")
        if self.perturbation == "blur":
            kernel = 2 * int(3 * self.sigma0) + 1
            return self.preprocess.baseline(images, "blur", kernel_size=kernel, sigma=self.sigma0)
        generator = torch.Generator(device=images.device).manual_seed(self.seed)
        noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        return self.preprocess.baseline(images, noise)

    def compute(self, images: Tensor, targets) -> Tensor:
        acts, grads, t = self.activations_and_gradients(images, targets)
        a, g = acts[0], grads[0]
        baselines, base = self._baselines(images), self.preprocess.baseline(images, self.baseline)

        def make_inputs(b: Tensor, masks: Tensor) -> list[Tensor]:
            key_area = masks * (masks > self.threshold)
            return [
                self.preprocess.mask(images[b], key_area, base[b]),
                self.preprocess.mask(images[b], masks, baselines[b]),
            ]

        seg, pert = self.masked_scores(images, a, t, make_inputs, target_probability)
        scores = seg * (1 + pert)
        sa = (
            scores
            + self.lambda1 * gradcam_weights(g).float()
            + self.lambda2 * gradcampp_weights(a, g).float()
        )
        return self.weighted_sum(sa.softmax(dim=1), a).clamp(min=0)
