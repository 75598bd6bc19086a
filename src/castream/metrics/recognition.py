"""Recognition metrics: average drop, gain and increase (thesis (1.10), (2.8), (1.11)); accuracy and mAP."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._scorer import Scorer
from ..preprocess import Preprocess, resolve_preprocess
from ._common import check_maps, evaluation, scorer_of


def drop_gain_increase(p: Tensor, o: Tensor) -> dict[str, Tensor]:
    """Per-image contributions, as fractions: ``drop = max(p-o, 0)/p`` (AD, thesis (1.10)),
    ``gain = max(o-p, 0)/(1-p)`` (AG, thesis (2.8)), ``increase = 1[o > p]`` (AI, thesis (1.11)).
    A zero denominator gives 0 (its numerator is then 0 too), never NaN."""
    drop = torch.where(p > 0, (p - o).clamp(min=0) / p.clamp(min=torch.finfo(p.dtype).tiny), 0.0)
    gain = torch.where(p < 1, (o - p).clamp(min=0) / (1 - p).clamp(min=torch.finfo(p.dtype).tiny), 0.0)
    return {"drop": drop, "gain": gain, "increase": (o > p).float()}


def recognition(
    model: nn.Module | Scorer,
    images: Tensor,
    maps: Tensor,
    targets=None,
    *,
    preprocess: Preprocess | None = None,
    normalize: bool = False,
    batch_size: int | None = None,
    output=None,
    forward_kwargs: dict | None = None,
    scores: str = "softmax",
    logits: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per-image ``p`` (clean probability of the target class), ``o`` (probability of the image masked by
    its map in pixel space), and the AD/AG/AI contributions ``drop``, ``gain``, ``increase`` (fractions;
    reports multiply by 100). ``targets``: ground-truth classes, or ``None`` for the predicted class.
    ``scores="sigmoid"``: probabilities are per-class sigmoids (multi-label models) instead of the softmax.
    ``model`` may be a :class:`castream.Scorer` (which then fixes output, forward kwargs, scores and batch
    size); ``logits``: the clean images' logits when the caller has them (no clean forward is made)."""
    maps = check_maps(maps, images, normalize)
    scorer = scorer_of(
        model, output=output, forward_kwargs=forward_kwargs, scores=scores, batch_size=batch_size
    )
    preprocess = resolve_preprocess(scorer.model, preprocess, "recognition")
    with evaluation(scorer):
        t, logits = scorer.clean(images, targets, logits)
        o = scorer.scores(preprocess.mask(images, maps), t)
    p = scorer.target_scores(logits, t)
    return {"p": p, "o": o, **drop_gain_increase(p, o), "target": t}


BOX_STUDY = ("box", "complement", "inside", "outside")


def box_study(
    model: nn.Module | Scorer,
    images: Tensor,
    maps: Tensor,
    boxes,
    targets=None,
    *,
    preprocess: Preprocess | None = None,
    normalize: bool = False,
    batch_size: int | None = None,
    output=None,
    forward_kwargs: dict | None = None,
    scores: str = "softmax",
    logits: Tensor | None = None,
) -> dict[str, Tensor]:
    """The bounding-box study of thesis Table 2.5: AD/AG/AI (as :func:`recognition`) of four maps built
    from the union ``B`` of each image's boxes (the localization metrics' ground truth):
    ``box`` S := B, ``complement`` S := I \\ B, ``inside`` B ∩ S = S ⊙ 1_B and ``outside`` S \\ B =
    S ⊙ (1 − 1_B). Keys ``{drop,gain,increase}_{box,complement,inside,outside}`` (B,); NaN for an image
    without boxes. The first two do not depend on the method; they are the scale of the other two. The
    clean images are forwarded once (or not at all, given their ``logits``), the four maps' masked images
    once each."""
    from .localization import _check, union_mask

    maps = check_maps(maps, images, normalize)
    boxes = _check(maps, boxes)
    height, width = maps.shape[-2:]
    inside = torch.stack([union_mask(b, height, width) for b in boxes]).to(maps.device, maps.dtype)
    valid = inside.flatten(1).any(1)
    study = torch.cat([inside, 1 - inside, maps * inside, maps * (1 - inside)])
    scorer = scorer_of(
        model, output=output, forward_kwargs=forward_kwargs, scores=scores, batch_size=batch_size
    )
    with evaluation(scorer):
        t, logits = scorer.clean(images, targets, logits)
    scores = recognition(
        scorer,
        images.repeat(4, 1, 1, 1),
        study,
        t.repeat(4),
        preprocess=preprocess,
        logits=logits.repeat(4, 1),
    )
    out = {}
    for key in ("drop", "gain", "increase"):
        for name, values in zip(BOX_STUDY, scores[key].view(4, -1)):
            out[f"{key}_{name}"] = torch.where(valid, values, float("nan"))
    return out


def accuracy(logits: Tensor, targets: Tensor, k: int = 1) -> Tensor:
    """Per-image top-``k`` correctness (B,) as floats."""
    topk = logits.topk(k, dim=1).indices
    return (topk == torch.as_tensor(targets, device=logits.device)[:, None]).any(dim=1).float()


def average_precision(scores: Tensor, labels: Tensor) -> Tensor:
    """Per-class average precision (C,) for multi-label scores/labels (N, C): area under the
    precision-recall curve with the monotone precision envelope (Pascal VOC 2010+); NaN for a class with
    no positive."""
    scores, labels = scores.float().cpu(), labels.float().cpu()
    order = scores.argsort(dim=0, descending=True, stable=True)
    hits = labels.gather(0, order)
    tp = hits.cumsum(0)
    precision = tp / torch.arange(1, len(scores) + 1)[:, None]
    envelope = precision.flip(0).cummax(0).values.flip(0)
    positives = labels.sum(0)
    ap = (envelope * hits).sum(0) / positives.clamp(min=1)
    return torch.where(positives > 0, ap, float("nan"))


def mean_average_precision(scores: Tensor, labels: Tensor) -> float:
    """mAP over classes that have at least one positive (Pascal VOC classification)."""
    ap = average_precision(scores, labels)
    return float(ap[~ap.isnan()].mean())
