"""Training: one loop (AMP, accumulation, DDP, checkpoints, resume) shared by every recipe."""

from .gradreg import ERRORS, GradientRegularizer, GradRegRecipe, thesis_config, train_gradreg
from .loop import GlobalBatches, Recipe, SeededDataset, TrainConfig, Trainer, distributed
from .recipes import ClassifierRecipe, StreamRecipe, train_classifier, train_stream

__all__ = [
    "ERRORS",
    "ClassifierRecipe",
    "GlobalBatches",
    "GradRegRecipe",
    "GradientRegularizer",
    "Recipe",
    "SeededDataset",
    "StreamRecipe",
    "TrainConfig",
    "Trainer",
    "distributed",
    "thesis_config",
    "train_classifier",
    "train_gradreg",
    "train_stream",
]
