"""Causal metrics: insertion and deletion (thesis Algorithms 1-2, Petsiuk et al.), AOPC (Samek et al.)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._scorer import Scorer
from ..preprocess import Preprocess, resolve_preprocess
from ..utils import check_int
from ._common import check_maps, chunked_scores, evaluation, scorer_of

# Presets (PROTOCOL.md). steps: pixels per step = ceil(H*W / steps), i.e. 224 px (thesis) at 224 x 224;
# step_per_side: pixels per step = that many times the image width (the authors' released code takes
# 8 x imsize: 1792 px at 224, 512 px at 64). "coarse" is the thesis protocol with 32 steps (7 times fewer
# forwards; the CPU demo's choice): the trapezoid AUC over 33 points instead of 225.
# ties: "stable" (equal saliency: lower pixel index first) or "reverse" (higher index first: the
# flip(argsort) of the authors' and RISE's code). blur_padding: "reflect" in pixel space, or "zeros" in
# normalized space (the authors' conv2d with zero padding, i.e. the dataset mean colour at the border).
# blur: the kernel's shape, "gaussian" (a Gaussian truncated to blur_kernel) or "rise" (RISE's and the
# authors' gkern: scipy's gaussian_filter of a centred delta, see Preprocess.baseline).
_THESIS = {
    "steps": 224,
    "step_per_side": None,
    "blur": "gaussian",
    "blur_kernel": 11,
    "blur_sigma": 5.0,
    "blur_padding": "reflect",
    "insertion": "blur",
    "deletion": "black",
    "ties": "stable",
}
PROTOCOLS: dict[str, dict] = {
    "thesis": _THESIS,
    "coarse": {**_THESIS, "steps": 32},
    "authors-code": {
        **_THESIS,
        "steps": None,
        "step_per_side": 8,
        "blur": "rise",
        "blur_kernel": 5,
        "blur_padding": "zeros",
        "deletion": "mean",
        "ties": "reverse",
    },
}
TIES = ("stable", "reverse")


class Curves(NamedTuple):
    """Insertion/deletion curves: ``probabilities`` (B, n+1) at ``fractions`` (n+1,) of pixels changed."""

    fractions: Tensor
    probabilities: Tensor
    protocol: str


def _protocol(name: str) -> dict:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; expected one of {tuple(PROTOCOLS)}")
    return PROTOCOLS[name]


def protocol_step(height: int, width: int, protocol: str = "thesis") -> int:
    """Pixels per step of a preset: ``ceil(H*W / steps)``, or ``step_per_side * W`` (authors' code)."""
    settings = _protocol(protocol)
    if settings["step_per_side"]:
        return settings["step_per_side"] * width
    return math.ceil(height * width / settings["steps"])


def step_rule(protocol: str) -> str:
    """A preset's step rule in words (for reports)."""
    settings = _protocol(protocol)
    if settings["step_per_side"]:
        return f"{settings['step_per_side']} x W pixels per step"
    return f"pixels per step ceil(H*W/{settings['steps']})"


def step_counts(height: int, width: int, protocol: str = "thesis", step: int | None = None) -> Tensor:
    """Numbers of changed pixels at each step: 0, step, 2 step, ..., H*W."""
    pixels = height * width
    step = protocol_step(height, width, protocol) if step is None else check_int("step", step)
    return (torch.arange(math.ceil(pixels / step) + 1) * step).clamp(max=pixels)


def saliency_rank(maps: Tensor, ties: str = "stable") -> Tensor:
    """Rank of every pixel in decreasing saliency (0 = most salient).

    ``ties="stable"``: among equal values the lower flat index comes first (a stable descending sort);
    ``"reverse"``: the higher index first, as ``flip(argsort(map))`` in the authors' and RISE's code.
    """
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    flat = maps.flatten(1)
    if ties == "stable":
        order = flat.argsort(dim=1, descending=True, stable=True)
    else:
        order = flat.argsort(dim=1, stable=True).flip(1)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def _causal(
    kind: str,
    scorer: Scorer,
    images: Tensor,
    maps: Tensor,
    targets,
    *,
    preprocess: Preprocess | None,
    protocol: str,
    step: int | None,
    baseline: str | Tensor | None,
    blur: str | None,
    return_curves: bool,
    normalize: bool,
    logits: Tensor | None,
):
    settings = _protocol(protocol)
    maps = check_maps(maps, images, normalize)
    preprocess = resolve_preprocess(scorer.model, preprocess, kind)
    height, width = images.shape[-2:]
    counts = step_counts(height, width, protocol, step).to(images.device)
    ranks = saliency_rank(maps, settings["ties"])
    baseline = settings[kind] if baseline is None else baseline
    base = preprocess.baseline(
        images,
        baseline,
        kernel=settings["blur"] if blur is None else blur,
        kernel_size=settings["blur_kernel"],
        sigma=settings["blur_sigma"],
        padding=settings["blur_padding"],
    ).expand_as(images)
    steps = len(counts)
    with evaluation(scorer):
        t, _ = scorer.clean(images, targets, logits)

        def build(flat: Tensor) -> tuple[Tensor, Tensor]:
            b, k = flat // steps, flat % steps
            changed = (ranks[b] < counts[k][:, None]).view(-1, height, width).to(images.dtype)
            keep = changed if kind == "insertion" else 1 - changed
            return preprocess.mask(images[b], keep, base[b]), t[b]

        curves = chunked_scores(scorer, len(images) * steps, build, images.device).view(-1, steps)
    fractions = counts.to(curves.dtype) / (height * width)
    auc = torch.trapezoid(curves, fractions, dim=1)
    return (auc, Curves(fractions, curves, protocol)) if return_curves else auc


def _causal_metric(kind: str, doc: str):
    """Build :func:`insertion` / :func:`deletion`: one signature, documented once."""

    def metric(
        model: nn.Module | Scorer,
        images: Tensor,
        maps: Tensor,
        targets=None,
        *,
        preprocess: Preprocess | None = None,
        protocol: str = "thesis",
        step: int | None = None,
        baseline: str | Tensor | None = None,
        blur: str | None = None,
        batch_size: int | None = None,
        return_curves: bool = False,
        normalize: bool = False,
        output=None,
        forward_kwargs: dict | None = None,
        scores: str = "softmax",
        logits: Tensor | None = None,
    ):
        return _causal(
            kind,
            scorer_of(
                model, output=output, forward_kwargs=forward_kwargs, scores=scores, batch_size=batch_size
            ),
            images,
            maps,
            targets,
            preprocess=preprocess,
            protocol=protocol,
            step=step,
            baseline=baseline,
            blur=blur,
            return_curves=return_curves,
            normalize=normalize,
            logits=logits,
        )

    metric.__name__ = metric.__qualname__ = kind
    metric.__doc__ = doc
    return metric


insertion = _causal_metric(
    "insertion",
    """Insertion AUC per image (B,) in [0, 1] (thesis Algorithm 1).

    Start from ``baseline`` (the protocol's: a Gaussian blur of the image, kernel 11, σ 5, reflect
    padding for ``"thesis"``; the authors' ``gkern(5, 5)``, a 5 x 5 box filter, with zero padding in
    normalized space for ``"authors-code"``; ``blur="gaussian"|"rise"`` overrides the kernel's shape, see
    :meth:`Preprocess.baseline`) and insert the image's pixels most salient first (ties: stable, lower
    index first; reversed for ``"authors-code"``), ``step`` pixels at a time (default ``ceil(H*W/224)``,
    or ``8 * W`` for ``"authors-code"``). The curve is the target probability against the fraction of
    pixels inserted (0 and 1 included); the AUC is the trapezoid rule. All steps of all images run in
    batched forwards of ``batch_size`` images. ``return_curves=True`` returns ``(auc, Curves)``;
    ``scores="sigmoid"`` takes per-class sigmoid probabilities (multi-label models). ``model`` may be a
    :class:`castream.Scorer`; ``logits``: the clean images' logits, when the caller has them (they only
    give the predicted class when ``targets`` is None). Higher is better.
    """,
)

deletion = _causal_metric(
    "deletion",
    """Deletion AUC per image (B,) in [0, 1] (thesis Algorithm 2): the most salient pixels are set to the
    ``baseline`` first (black in pixel space for ``"thesis"``, the dataset mean colour for
    ``"authors-code"``); otherwise as :func:`insertion`. Lower is better.""",
)


def region_masks(maps: Tensor, patch_size: int, regions: int) -> Tensor:
    """Cumulative masks (B, regions + 1, H, W) of the most relevant non-overlapping square patches.

    Every top-left position is scored by the saliency summed over its patch (clipped at the border); the
    best patch is taken, every patch overlapping it is excluded, and so on (the greedy order of Quantus'
    RegionPerturbation). Index 0 is the empty mask. Where no free patch is left a step adds nothing.
    """
    batch, height, width = maps.shape
    padded = F.pad(maps[:, None], (0, patch_size - 1, 0, patch_size - 1))
    scores = F.avg_pool2d(padded, patch_size, stride=1).squeeze(1).flatten(1)  # (B, H*W) patch means
    rows = torch.arange(height, device=maps.device).repeat_interleave(width)
    cols = torch.arange(width, device=maps.device).repeat(height)
    masks = torch.zeros(batch, regions + 1, height, width, dtype=torch.bool, device=maps.device)
    for r in range(1, regions + 1):
        best, index = scores.max(dim=1)
        free = best > -math.inf
        i0, j0 = rows[index], cols[index]
        inside_rows = (rows[None] >= i0[:, None]) & (rows[None] < i0[:, None] + patch_size)
        inside_cols = (cols[None] >= j0[:, None]) & (cols[None] < j0[:, None] + patch_size)
        patch = (inside_rows & inside_cols & free[:, None]).view(batch, height, width)
        masks[:, r] = masks[:, r - 1] | patch
        overlapping = ((rows[None] - i0[:, None]).abs() < patch_size) & (
            (cols[None] - j0[:, None]).abs() < patch_size
        )
        scores = scores.masked_fill(overlapping, -math.inf)
    return masks


def grid_patch_ranks(maps: Tensor, patch_size: int) -> Tensor:
    """Rank (B, H, W) of the grid patch holding each pixel, most relevant patch first (Quantus 0.6).

    The image is padded to a multiple of ``patch_size`` (``floor``/``ceil`` of the excess on each side,
    as Quantus' ``get_padding_size``), cut into non-overlapping patches, and the patches are ordered by
    their saliency sum (zero outside the image), descending with stable ties.
    """
    height, width = maps.shape[-2:]
    pad_h, pad_w = (-height) % patch_size, (-width) % patch_size
    padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
    padded = F.pad(maps[:, None], padding)
    sums = F.avg_pool2d(padded, patch_size).flatten(1)  # (B, patches), means of equal-size patches
    order = sums.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(sums.shape[1], device=maps.device).expand_as(order))
    grid_w = padded.shape[-1] // patch_size
    rows = (torch.arange(height, device=maps.device) + padding[2]) // patch_size
    cols = (torch.arange(width, device=maps.device) + padding[0]) // patch_size
    return ranks[:, (rows[:, None] * grid_w + cols[None, :]).flatten()].view(-1, height, width)


AOPC_CONVENTIONS = ("castream", "quantus", "quantus-0.5")
QUANTUS_BASELINES = ("uniform", "black", "white")


def aopc(
    model: nn.Module | Scorer,
    images: Tensor,
    maps: Tensor,
    targets=None,
    *,
    preprocess: Preprocess | None = None,
    patch_size: int = 14,
    regions: int = 10,
    baseline: str | Tensor = "uniform",
    convention: str = "castream",
    seed: int = 0,
    batch_size: int | None = None,
    normalize: bool = False,
    output=None,
    forward_kwargs: dict | None = None,
    scores: str = "softmax",
    logits: Tensor | None = None,
) -> Tensor:
    """AOPC per image (B,) (Samek et al., thesis §2.7 / Table 2.3: patch 14, L = 10 regions, most relevant
    first). Higher is better.

    ``convention="castream"`` (default): ``1/(L+1) sum_{k=0..L} (p(x) - p(x^(k)))`` (Samek et al.'s
    definition) where ``x^(k)`` has the k most relevant patches replaced, chosen greedily over every
    top-left position with overlapping patches excluded (Quantus' RegionPerturbation up to 0.5); the
    replacement is done in pixel space: ``baseline="uniform"`` is uniform pixel noise drawn with
    ``seed``; ``"black"``, ``"mean"``, ``"blur"`` or a pixel tensor also work.

    ``convention="quantus"`` (Quantus 0.6's RegionPerturbation): the patches are the cells of a fixed
    grid (:func:`grid_patch_ranks`), the mean runs over k = 1..L only, ``1/L sum_{k=1..L} (p(x) -
    p(x^(k)))``, and values are written in model-input (normalized) space: ``"uniform"`` is one U(0, 1)
    value per image and patch (seeded), ``"black"``/``"white"`` the image's minimum/maximum input value,
    or a tensor of normalized values broadcastable to the images.

    ``convention="quantus-0.5"`` (Quantus up to 0.5, as the Quantus tutorial the thesis' §2.7 AOPC
    followed: ``RegionPerturbation(patch_size=14, regions_evaluation=10, perturb_baseline="uniform")``):
    castream's greedy patch order, the mean over k = 1..L (over the patches found, when fewer than L fit),
    values in model-input space: ``"uniform"`` is one U(0, 1) value per image, patch and channel (seeded),
    ``"black"``/``"white"`` and tensors as for ``"quantus"``. With the same perturbations castream's
    default is L/(L+1) of it (10/11 at L = 10: its k = 0 term is 0). ``scores="sigmoid"``: per-class
    sigmoid probabilities (multi-label models). ``model`` may be a :class:`castream.Scorer`; ``logits``:
    the clean images' logits, when the caller has them (no clean forward is made).
    """
    scorer = scorer_of(
        model, output=output, forward_kwargs=forward_kwargs, scores=scores, batch_size=batch_size
    )
    if convention not in AOPC_CONVENTIONS:
        raise ValueError(f"convention must be one of {AOPC_CONVENTIONS}, got {convention!r}")
    maps = check_maps(maps, images, normalize)
    preprocess = resolve_preprocess(scorer.model, preprocess, "aopc")
    check_int("patch_size", patch_size)
    check_int("regions", regions)
    generator = torch.Generator(device=images.device).manual_seed(seed)
    found = None  # per image and step k = 1..L: whether a patch was added (quantus-0.5)
    if convention in ("quantus", "quantus-0.5"):
        if convention == "quantus":
            ranks = grid_patch_ranks(maps, patch_size)
            patches = int(ranks.max()) + 1
            if regions > patches:
                raise ValueError(f"regions={regions} exceeds the {patches} grid patches of size {patch_size}")
        else:  # the step at which each pixel's patch is replaced (0-based; `regions`: never)
            masks = region_masks(maps, patch_size, regions)
            ranks = regions - masks[:, 1:].sum(dim=1)
            found = (masks[:, 1:] != masks[:, :-1]).flatten(2).any(dim=2)
        if isinstance(baseline, Tensor):
            values = baseline.to(images).expand_as(images)
        elif baseline == "uniform":
            channels = images.shape[1] if convention == "quantus-0.5" else 1
            noise = torch.rand(len(images), regions, channels, generator=generator, device=images.device)
            if convention == "quantus":
                noise = noise.squeeze(2)  # the draws of the grid convention, one per image and patch
                values = noise.to(images.dtype).gather(1, ranks.clamp(max=regions - 1).flatten(1))
                values = values.view(-1, 1, *images.shape[-2:]).expand_as(images)
            else:
                index = ranks.clamp(max=regions - 1).flatten(1)[:, :, None].expand(-1, -1, channels)
                values = noise.to(images.dtype).gather(1, index).transpose(1, 2).view_as(images)
        elif baseline in ("black", "white"):
            flat = images.flatten(1)
            extreme = flat.amin(1) if baseline == "black" else flat.amax(1)
            values = extreme.view(-1, 1, 1, 1).expand_as(images)
        else:
            raise ValueError(
                f"quantus convention baselines: {QUANTUS_BASELINES} or a normalized tensor, got {baseline!r}"
            )
        first = 1

        def perturbed(b: Tensor, k: Tensor) -> Tensor:
            replaced = (ranks[b] < k[:, None, None]).unsqueeze(1)
            return torch.where(replaced, values[b], images[b])
    else:
        if isinstance(baseline, str) and baseline == "uniform":
            noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
            base = preprocess.baseline(images, noise)
        else:
            base = preprocess.baseline(images, baseline).expand_as(images)
        masks = region_masks(maps, patch_size, regions)
        first = 0

        def perturbed(b: Tensor, k: Tensor) -> Tensor:
            return preprocess.mask(images[b], (~masks[b, k]).to(images.dtype), base[b])

    steps = regions + 1 - first
    with evaluation(scorer):
        t, logits = scorer.clean(images, targets, logits)

        def build(flat: Tensor) -> tuple[Tensor, Tensor]:
            b, k = flat // steps, flat % steps + first
            return perturbed(b, k), t[b]

        curves = chunked_scores(scorer, len(images) * steps, build, images.device).view(-1, steps)
    drops = scorer.target_scores(logits, t)[:, None] - curves
    if found is None:
        return drops.mean(dim=1)
    return (drops * found).sum(dim=1) / found.sum(dim=1)
