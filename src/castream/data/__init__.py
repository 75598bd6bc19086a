"""Datasets: the built-in synthetic benchmark and real datasets in their official layouts."""

from . import classes, synthetic, transforms
from .datasets import (
    CIFAR100,
    CUB200,
    MIT67,
    VOC2012,
    VOC_CLASSES,
    AnnotatedImages,
    Batch,
    ImageFolder,
    ImageNet,
    Sample,
    class_boxes,
    collate,
    voc_boxes,
)
from .synthetic import SyntheticShapes
from .transforms import cifar_train_transform, crop_region, eval_transform, train_transform

__all__ = [
    "CIFAR100",
    "CUB200",
    "MIT67",
    "VOC2012",
    "VOC_CLASSES",
    "AnnotatedImages",
    "Batch",
    "ImageFolder",
    "ImageNet",
    "Sample",
    "SyntheticShapes",
    "cifar_train_transform",
    "class_boxes",
    "classes",
    "collate",
    "crop_region",
    "eval_transform",
    "synthetic",
    "train_transform",
    "transforms",
    "voc_boxes",
]
