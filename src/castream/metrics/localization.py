"""Localization metrics (thesis (1.16)-(1.22)): OM, LE, pixel-wise F1, BoxAcc, SP, EP, SM.

A saliency map is binarized at its mean (``map > mean``); the predicted box ``B_p`` is the bounding box
of the largest 8-connected component (scipy.ndimage, on the CPU), in pixel coordinates
``(x0, y0, x1, y1)`` with exclusive ends. Ground-truth boxes use the same convention; a pixel belongs to
a box (and to their union U) when its centre lies inside it. Images without boxes get NaN for every
metric and ``valid = False``; aggregation skips and counts them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from .._scorer import Scorer
from ._common import check_map_values, check_maps, evaluation, scorer_of

try:
    from .. import _components
except ImportError:  # built without a C compiler: threshold_boxes uses its scipy loop
    _components = None

ETAS = tuple(i / 100 for i in range(100))  # BoxAcc thresholds 0, 0.01, ..., 0.99
DELTAS = (0.3, 0.5, 0.7)
_EIGHT = np.ones((3, 3), dtype=bool)


def largest_component_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box ``(x0, y0, x1, y1)`` of the largest 8-connected True region, or None when empty."""
    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    rows, cols = np.nonzero(labels == 1 + int(sizes.argmax()))
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def box_iou(box: tuple | None, boxes: Tensor) -> float:
    """Largest IoU between one box (None = empty) and ground-truth boxes (n, 4)."""
    if box is None or len(boxes) == 0:
        return 0.0
    b = torch.tensor(box, dtype=torch.float64)
    g = boxes.double()
    w = (torch.minimum(b[2], g[:, 2]) - torch.maximum(b[0], g[:, 0])).clamp(min=0)
    h = (torch.minimum(b[3], g[:, 3]) - torch.maximum(b[1], g[:, 1])).clamp(min=0)
    inter = w * h
    union = (b[2] - b[0]) * (b[3] - b[1]) + (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]) - inter
    return float((inter / union.clamp(min=1e-12)).max())


def pointing_hits(maps: Tensor, regions: Tensor, tolerance: float = 1e-6) -> Tensor:
    """Pointing game (thesis (1.21)) with ties (PROTOCOL.md): per image (B,), whether any pixel whose value
    lies within ``tolerance`` (relative) of the map's maximum falls in ``regions`` (B, H, W) bool. The
    rule of Quantus' PointingGame; unlike ``argmax`` it does not depend on the image's orientation. A
    constant map ties everywhere, so it hits whenever the region is not empty."""
    flat = maps.flatten(1)
    top = flat.max(dim=1, keepdim=True).values
    peak = flat >= top - tolerance * top.abs()
    return (peak & regions.flatten(1).to(peak.device)).any(dim=1)


def union_mask(boxes: Tensor, height: int, width: int) -> Tensor:
    """Pixels whose centre lies in any box: the union U as an (H, W) boolean tensor."""
    ys = torch.arange(height, dtype=torch.float64)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float64)[None, :] + 0.5
    mask = torch.zeros(height, width, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes.double().tolist():
        mask |= (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)
    return mask


def _check(maps: Tensor, boxes: Sequence[Tensor]) -> list[Tensor]:
    """Maps (B, H, W) finite in [0, 1]; per image a box tensor (n, 4) of finite ``(x0, y0, x1, y1)`` with
    x0 < x1 and y0 < y1, returned clamped to the image. A box entirely outside the image is invalid (not a
    zero score), since it would silently score every map as a miss."""
    if not isinstance(maps, Tensor) or maps.dim() != 3 or not maps.is_floating_point():
        got = f"{tuple(maps.shape)} {maps.dtype}" if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"expected maps as a floating-point tensor of shape (B, H, W), got {got}")
    check_map_values(maps)
    if len(boxes) != len(maps):
        raise ValueError(f"expected one box tensor per map ({len(maps)}), got {len(boxes)}")
    height, width = maps.shape[-2:]
    out = []
    for i, b in enumerate(boxes):
        b = torch.as_tensor(b, dtype=torch.float64)
        if b.numel() == 0:
            out.append(torch.zeros(0, 4, dtype=torch.float64))
            continue
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(
                f"boxes of image {i} must have shape (n, 4) (x0, y0, x1, y1), got {tuple(b.shape)}"
            )
        if not torch.isfinite(b).all():
            raise ValueError(f"boxes of image {i} contain NaN or Inf: {b.tolist()}")
        if (b[:, 2] <= b[:, 0]).any() or (b[:, 3] <= b[:, 1]).any():
            raise ValueError(
                f"boxes of image {i} must be (x0, y0, x1, y1) with x0 < x1 and y0 < y1, got {b.tolist()}"
            )
        clamped = torch.stack(
            [
                b[:, 0].clamp(0, width),
                b[:, 1].clamp(0, height),
                b[:, 2].clamp(0, width),
                b[:, 3].clamp(0, height),
            ],
            1,
        )
        outside = (clamped[:, 2] <= clamped[:, 0]) | (clamped[:, 3] <= clamped[:, 1])
        if outside.any():
            raise ValueError(
                f"boxes of image {i} lie entirely outside the {width}x{height} image: {b[outside].tolist()}"
            )
        out.append(clamped)
    return out


def threshold_boxes(map_: np.ndarray, etas: Sequence[float] = ETAS) -> np.ndarray:
    """Boxes ``(len(η), 4)`` int64 of the largest 8-connected component of ``map > η`` for every η, -1 rows
    where nothing exceeds η; ties as :func:`largest_component_box` (first component in raster order).

    The sets ``map > η`` are nested, so one union-find pass over the pixels in decreasing value order
    finds the largest component at every threshold at once (the compiled ``castream._components``, about
    1 ms for 224 x 224 and 100 thresholds). Without the compiled helper (no C compiler at install time),
    one ``scipy.ndimage.label`` per threshold gives the same boxes, about 50 times slower. Both get the
    inputs checked here: a 2-D map of finite values and finite thresholds (NaN has no order); a map
    without pixels has no component (-1 rows), and no thresholds give no rows."""
    values = np.asarray(map_)
    if values.ndim != 2 or values.dtype.kind not in "biuf":
        raise ValueError(
            f"threshold_boxes takes a 2-D numeric map, got shape {values.shape} of {values.dtype}"
        )
    values = np.ascontiguousarray(values, dtype=np.float32)
    thresholds = np.asarray(etas, dtype=np.float32)  # map > η is compared in float32, as numpy does it
    if thresholds.ndim != 1:
        raise ValueError(f"thresholds must be a sequence of numbers, got shape {thresholds.shape}")
    if not (np.isfinite(values).all() and np.isfinite(thresholds).all()):
        raise ValueError("threshold_boxes needs a finite map and finite thresholds (NaN or Inf found)")
    if values.size == 0 or thresholds.size == 0:
        return np.full((len(thresholds), 4), -1, dtype=np.int64)
    order = np.argsort(thresholds, kind="stable")
    if _components is None:
        boxes = np.array(
            [largest_component_box(values > eta) or (-1, -1, -1, -1) for eta in thresholds[order]],
            dtype=np.int64,
        ).reshape(len(order), 4)
    else:
        levels = np.searchsorted(thresholds[order], values, side="left").astype(np.int32)  # #{η < value}
        raw = _components.largest_boxes(levels.tobytes(), *values.shape, len(order))
        boxes = np.frombuffer(raw, dtype=np.int32).reshape(len(order), 4).astype(np.int64)
    out = np.empty_like(boxes)
    out[order] = boxes
    return out


def _boxes_iou(boxes: np.ndarray, truth: Tensor) -> np.ndarray:
    """:func:`box_iou` of many predicted boxes (k, 4) (-1 rows: empty) against the same ground truth."""
    g = truth.double().numpy()[None]
    b = boxes.astype(np.float64)[:, None]
    w = np.clip(np.minimum(b[..., 2], g[..., 2]) - np.maximum(b[..., 0], g[..., 0]), 0, None)
    h = np.clip(np.minimum(b[..., 3], g[..., 3]) - np.maximum(b[..., 1], g[..., 1]), 0, None)
    inter = w * h
    union = (
        (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
        + (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
        - inter
    )
    iou = (inter / np.maximum(union, 1e-12)).max(axis=1)
    return np.where(boxes[:, 0] < 0, 0.0, iou)


def threshold_ious(maps: Tensor, boxes: Sequence[Tensor], etas: Sequence[float] = ETAS) -> Tensor:
    """Per image and threshold η: max IoU of the box of the largest component of ``map > η`` (B, len(η));
    NaN rows for images without boxes. BoxAcc is computed from these (:func:`box_accuracy_from_ious`)."""
    boxes = _check(maps, boxes)
    arrays = maps.detach().float().cpu().numpy()
    out = torch.full((len(maps), len(etas)), float("nan"))
    for i, (m, b) in enumerate(zip(arrays, boxes)):
        if len(b):
            out[i] = torch.from_numpy(_boxes_iou(threshold_boxes(m, etas), b))
    return out


def box_accuracy_from_ious(ious: Tensor, deltas: Sequence[float] = DELTAS) -> float:
    """BoxAcc (Choe et al., thesis (1.20)): for each δ the best over η of the fraction of images whose
    IoU reaches δ, then the mean over δ. Rows with NaN (images without boxes) are ignored."""
    ious = ious[~ious.isnan().any(dim=1)]
    if len(ious) == 0:
        return float("nan")
    return float(sum((ious >= d).float().mean(0).max() for d in deltas) / len(deltas))


def box_accuracy(maps: Tensor, boxes: Sequence[Tensor], *, deltas: Sequence[float] = DELTAS) -> float:
    """Dataset-level BoxAcc of these maps (thesis (1.20)); η ∈ {0, 0.01, ..., 0.99}."""
    return box_accuracy_from_ious(threshold_ious(maps, boxes), deltas)


def predicted_box(map_: np.ndarray) -> tuple[int, int, int, int] | None:
    """B_p of thesis §1.3.3: the box of the largest component of the map thresholded at its mean (None for a
    constant map, which has no salient region)."""
    return largest_component_box(map_ > map_.mean())


SM_PROBABILITIES = ("crop", "clean")


def sm_probabilities(
    model: nn.Module | Scorer,
    images: Tensor,
    maps: Tensor,
    targets=None,
    *,
    probability: str = "crop",
    batch_size: int | None = None,
    output=None,
    forward_kwargs: dict | None = None,
    scores: str = "softmax",
    logits: Tensor | None = None,
) -> Tensor:
    """``p^c`` of SM (thesis (1.22)) per image (B,), float32. ``probability="crop"`` (the default): as
    Dabkowski & Gal define the metric that (1.22) cites, the target's probability on the tightest crop of
    the predicted box B_p (:func:`predicted_box`), resized bilinearly to the input size; a constant map has
    no box, and its crop is the whole image. ``"clean"``: the clean image's probability, the same for every
    map of an image: SM then ranks an image's maps by their box area alone, and a whole-image map such as
    Fake-CAM's scores 0 - log p, which no map beats)."""
    if probability not in SM_PROBABILITIES:
        raise ValueError(f"probability must be one of {SM_PROBABILITIES}, got {probability!r}")
    maps = check_maps(maps, images)
    scorer = scorer_of(
        model, output=output, forward_kwargs=forward_kwargs, scores=scores, batch_size=batch_size
    )
    height, width = images.shape[-2:]
    with evaluation(scorer):
        t, logits = scorer.clean(images, targets, logits)
        if probability == "clean":
            return scorer.target_scores(logits, t)
        crops = torch.empty_like(images)
        for i, m in enumerate(maps.detach().float().cpu().numpy()):
            x0, y0, x1, y1 = predicted_box(m) or (0, 0, width, height)
            crop = images[i : i + 1, :, y0:y1, x0:x1]
            crops[i] = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)[0]
        return scorer.scores(crops, t)


def localization(
    maps: Tensor,
    boxes: Sequence[Tensor],
    targets: Tensor,
    predictions: Tensor,
    probabilities: Tensor,
) -> dict[str, Tensor]:
    """Per-image localization metrics (B,) as fractions (SM in nats):

    - ``om`` = 1 - max IoU(B, B_p) · 1[predicted = target] (1.16); ``le`` = 1 - max IoU(B, B_p) (1.17)
    - ``f1`` = 2PR/(P+R) with precision ``P`` = saliency mass inside U / total mass (1.18) and recall
      ``R`` = saliency mass inside U / |U| (1.19)
    - ``sp``: a most salient pixel lies in U (1.21; ties as in :func:`pointing_hits`); ``ep`` = P (energy
      pointing game)
    - ``sm`` = log max(0.05, |B_p| / (h w)) - log p_c (1.22), ``p_c`` = ``probabilities`` of the target:
      :func:`sm_probabilities` gives the crop's (Dabkowski & Gal; what the runner uses) or the clean
      image's. A constant map has no box B_p: its SM counts the whole image (|B_p| = h w, the crop being
      the whole image too)
    - ``valid``: the image has at least one box.
    """
    boxes = _check(maps, boxes)
    batch, height, width = maps.shape
    probabilities = torch.as_tensor(probabilities)
    for name, value in (("targets", targets), ("predictions", predictions), ("probabilities", probabilities)):
        if torch.as_tensor(value).shape != (batch,):
            raise ValueError(f"{name} must have shape ({batch},), got {tuple(torch.as_tensor(value).shape)}")
    if not torch.isfinite(probabilities).all() or probabilities.min() < 0 or probabilities.max() > 1:
        raise ValueError(f"probabilities must lie in [0, 1], got {probabilities.tolist()}")
    maps_cpu = maps.detach().double().cpu()
    targets, predictions = torch.as_tensor(targets).cpu(), torch.as_tensor(predictions).cpu()
    probabilities = torch.as_tensor(probabilities).double().cpu()
    keys = ("om", "le", "f1", "sp", "ep", "sm")
    out = {k: torch.full((batch,), float("nan"), dtype=torch.float64) for k in keys}
    valid = torch.tensor([len(b) > 0 for b in boxes])
    for i in valid.nonzero().flatten().tolist():
        m, b = maps_cpu[i], boxes[i]
        box = predicted_box(m.numpy())
        iou = box_iou(box, b)
        inside = union_mask(b, height, width)
        mass, hit = m.sum(), m[inside].sum()
        precision = float(hit / mass) if mass > 0 else 0.0
        recall = float(hit / inside.sum()) if inside.any() else 0.0
        area = 0 if box is None else (box[2] - box[0]) * (box[3] - box[1])
        out["le"][i] = 1 - iou
        out["om"][i] = 1 - iou * float(predictions[i] == targets[i])
        out["f1"][i] = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        out["sp"][i] = float(pointing_hits(m[None], inside[None])[0])
        out["ep"][i] = precision
        fraction = 1.0 if box is None else area / (height * width)
        out["sm"][i] = math.log(max(0.05, fraction)) - math.log(max(float(probabilities[i]), 1e-12))
    result = {k: v.float() for k, v in out.items()}
    result["valid"] = valid
    return result


def unit_interpretability(
    activations: Tensor, masks: Tensor, *, top: float = 0.005, batch_size: int = 16
) -> Tensor:
    """Unit interpretability of Network Dissection (Bau et al. 2017), thesis eq. (1.15): ``(K, C)``
    dataset-level ``IoU_{k,c} = Σ_x |M^k(x) ∩ L_c(x)| / Σ_x |M^k(x) ∪ L_c(x)|``.

    ``activations`` (N, K, h, w): unit ``k``'s feature maps over the N images; ``masks`` (N, C, H, W):
    the localization (segmentation) mask of each concept ``c``. ``M^k`` is ``A^k`` upsampled bilinearly
    to H x W and binarized at ``T_k``, the unit's top-``top`` quantile over all its activations in the
    dataset (Network Dissection's 0.005: its ``top``·N·h·w-th largest value). A pair with an empty union
    is NaN. The sums run over chunks of ``batch_size`` images, on the activations' device. Network
    Dissection calls unit ``k`` a detector of the concept with the highest IoU when it exceeds 0.04.
    """
    if not isinstance(activations, Tensor) or activations.dim() != 4 or not activations.is_floating_point():
        raise ValueError(f"activations must be a float (N, K, h, w) tensor, got {_describe(activations)}")
    if not isinstance(masks, Tensor) or masks.dim() != 4 or len(masks) != len(activations):
        raise ValueError(
            f"masks must be an (N, C, H, W) tensor with N = {len(activations)}, got {_describe(masks)}"
        )
    if not 0 < top < 1:
        raise ValueError(f"top must be a fraction in (0, 1), got {top!r}")
    from ..utils import check_int

    batch_size = check_int("batch_size", batch_size)
    count = activations.shape[0] * activations.shape[2] * activations.shape[3]
    per_unit = activations.transpose(0, 1).reshape(activations.shape[1], -1)
    kth = max(1, round(top * count))
    thresholds = per_unit.topk(kth, dim=1).values[:, -1].float()
    masks = masks.to(activations.device, torch.bool)
    size = masks.shape[-2:]
    inter = torch.zeros(activations.shape[1], masks.shape[1], dtype=torch.float64, device=activations.device)
    unit_area = torch.zeros(activations.shape[1], dtype=torch.float64, device=activations.device)
    for start in range(0, len(activations), batch_size):
        chunk = activations[start : start + batch_size].float()
        up = torch.nn.functional.interpolate(chunk, size=size, mode="bilinear", align_corners=False)
        binary = (up >= thresholds[None, :, None, None]).flatten(2).double()  # (n, K, P)
        labels = masks[start : start + batch_size].flatten(2).double()  # (n, C, P)
        inter += torch.einsum("nkp,ncp->kc", binary, labels)
        unit_area += binary.sum(dim=(0, 2))
    concept_area = masks.flatten(2).sum(dim=(0, 2)).double()
    union = unit_area[:, None] + concept_area[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))


def _describe(value) -> str:
    return (
        f"{type(value).__name__} of shape {tuple(value.shape)}" if isinstance(value, Tensor) else repr(value)
    )
