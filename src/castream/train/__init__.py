"""Training: one loop (AMP, accumulation, DDP, checkpoints, resume) shared by every recipe."""

from .loop import GlobalBatches, Recipe, SeededDataset, TrainConfig, Trainer, distributed
from .recipes import ClassifierRecipe, StreamRecipe, train_classifier, train_stream

__all__ = [
    "ClassifierRecipe",
    "GlobalBatches",
    "Recipe",
    "SeededDataset",
    "StreamRecipe",
    "TrainConfig",
    "Trainer",
    "distributed",
    "train_classifier",
    "train_stream",
]
