"""Joint image/box/mask transforms matching torchvision's classification reference recipe.

Train: RandomResizedCrop + horizontal flip; eval: resize to ``size * 256 / 224`` then centre crop
``size`` (256 -> 224 at the default). Both end with ImageNet mean/std normalization. Boxes are clamped
to the crop and boxes left empty are dropped (with their labels).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils._pytree import tree_flatten
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..preprocess import IMAGENET_MEAN, IMAGENET_STD


def _box_labels(inputs) -> torch.Tensor | None:
    target = inputs[1] if isinstance(inputs, tuple) and len(inputs) > 1 else {}
    return target.get("box_labels") if isinstance(target, dict) else None


class _SanitizeBoxes(v2.SanitizeBoundingBoxes):
    """Drop emptied boxes with their labels; a sample without boxes (a dataset view without annotations,
    see ``AnnotatedImages.without_annotations``) passes through unchanged."""

    def forward(self, *inputs):
        flat = tree_flatten(inputs)[0]
        if not any(isinstance(x, tv_tensors.BoundingBoxes) for x in flat):
            return inputs if len(inputs) > 1 else inputs[0]
        return super().forward(*inputs)


def _finish(mean: Sequence[float], std: Sequence[float], boxes: bool) -> list:
    steps = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return [*steps, v2.ClampBoundingBoxes(), _SanitizeBoxes(labels_getter=_box_labels)] if boxes else steps


def train_transform(
    size: int = 224,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    boxes: bool = True,
) -> v2.Compose:
    """RandomResizedCrop(size, scale) + RandomHorizontalFlip + normalization (``boxes=False`` for a bare
    image without a target)."""
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=scale, antialias=True),
            v2.RandomHorizontalFlip(),
            *_finish(mean, std, boxes),
        ]
    )


def eval_transform(
    size: int = 224,
    *,
    resize: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    boxes: bool = True,
) -> v2.Compose:
    """Resize the short side to ``resize`` (default ``round(size * 256 / 224)``), centre crop ``size``,
    normalize (``boxes=False`` for a bare image without a target)."""
    resize = resize or round(size * 256 / 224)
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size), *_finish(mean, std, boxes)])


def crop_region(photo_size: tuple[int, int], size: int = 224, resize: int | None = None) -> tuple[float, ...]:
    """Where :func:`eval_transform`'s centre crop lies on a photograph of ``photo_size = (width, height)``:
    ``(x0, y0, x1, y1)`` in its pixels, to show a map on the whole photograph (``viz.figure(regions=)``)."""
    width, height = photo_size
    scale = (resize or round(size * 256 / 224)) / min(width, height)
    side = size / scale
    x0, y0 = (width - side) / 2, (height - side) / 2
    return (max(0.0, x0), max(0.0, y0), min(width, x0 + side), min(height, y0 + side))


def cifar_train_transform(
    size: int = 32,
    *,
    padding: int = 4,
    rotation: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """The CIFAR recipe (thesis §4.3.1): RandomCrop(size, padding) + RandomHorizontalFlip (+ RandomRotation
    of ±``rotation`` degrees, 15 in weiaicunzai/pytorch-cifar100) + normalization. ImageNet statistics by
    default, so the evaluation's Preprocess needs no change."""
    rotate = [v2.RandomRotation(rotation)] if rotation else []
    return v2.Compose(
        [
            v2.RandomCrop(size, padding=padding),
            v2.RandomHorizontalFlip(),
            *rotate,
            *_finish(mean, std, True),
        ]
    )
