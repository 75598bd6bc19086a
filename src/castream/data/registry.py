"""Datasets by specification string ``KIND:PATH`` (used by the CLI and the evaluation runner)."""

from __future__ import annotations

from pathlib import Path

from .datasets import (
    CIFAR100,
    CUB200,
    MIT67,
    VOC2012,
    AnnotatedImages,
    CSVImages,
    ImageFiles,
    ImageFolder,
    ImageNet,
)
from .synthetic import SyntheticShapes

# kind -> (class, train split, evaluation split); None: a plain folder without splits
KINDS = {
    "synthetic": (SyntheticShapes, "train", "val"),
    "imagenet": (ImageNet, "train", "val"),
    "cub": (CUB200, "train", "test"),
    "voc": (VOC2012, "train", "val"),
    "cifar100": (CIFAR100, "train", "test"),
    "mit67": (MIT67, "train", "test"),
    "folder": (ImageFolder, None, None),
    "images": (ImageFiles, None, None),  # a flat folder without labels
    "csv": (CSVImages, None, None),  # path,label[,boxes] rows
}


def parse_spec(spec: str) -> tuple[str, Path]:
    kind, sep, path = spec.partition(":")
    if not sep or kind not in KINDS or not path:
        raise ValueError(f"dataset must be KIND:PATH with KIND one of {sorted(KINDS)}, got {spec!r}")
    return kind, Path(path)


def open_dataset(spec: str, role: str = "eval", transform=None, **options) -> AnnotatedImages:
    """Open ``KIND:PATH`` for ``role`` ``"train"`` or ``"eval"`` (the kind's official split for that role).
    ``options`` go to the dataset (e.g. ``boxes=`` for ImageNet)."""
    kind, path = parse_spec(spec)
    cls, train_split, eval_split = KINDS[kind]
    if "boxes" in options and cls is not ImageNet:
        raise ValueError(
            f"boxes= (a folder of ImageNet bounding-box XML files) applies to imagenet data only, not {kind}"
            + ("; the synthetic benchmark has its own boxes" if kind == "synthetic" else "")
        )
    if train_split is None:
        return cls(path, transform=transform)
    split = train_split if role == "train" else eval_split
    return cls(path, split, transform=transform, **options)


def is_multilabel(dataset) -> bool:
    return isinstance(dataset, VOC2012)
