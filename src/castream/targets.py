"""What a gradient method explains, besides a class index: a callable of the model's output per image.

pytorch-grad-cam's convention: ``targets`` is a list of callables, one per image, each applied to that
image's output (``ClassifierOutputTarget(c)(output_i) = output_i[c]``); a single callable is applied to
every image's output. The outputs may have any shape (a segmentation model's ``(C, H, W)`` scores with
:class:`SemanticSegmentationTarget`). The gradient methods (Grad-CAM and its family) take them; the
methods that score masked inputs take class indices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class ClassifierOutputTarget:
    """The logit of class ``category``."""

    def __init__(self, category: int) -> None:
        self.category = int(category)

    def __call__(self, output: Tensor) -> Tensor:
        return output[..., self.category]


class ClassifierOutputSoftmaxTarget(ClassifierOutputTarget):
    """The softmax probability of class ``category``."""

    def __call__(self, output: Tensor) -> Tensor:
        return output.softmax(dim=-1)[..., self.category]


class SemanticSegmentationTarget:
    """A segmentation model's score of ``category`` summed over ``mask`` (H, W): ``sum(output[c] * mask)``,
    for an output of shape (C, H, W) per image."""

    def __init__(self, category: int, mask: Tensor) -> None:
        self.category, self.mask = int(category), torch.as_tensor(mask)

    def __call__(self, output: Tensor) -> Tensor:
        if output.dim() != 3 or tuple(output.shape[-2:]) != tuple(self.mask.shape):
            raise ValueError(
                f"SemanticSegmentationTarget expects a (C, H, W) output of {tuple(self.mask.shape)} pixels "
                f"per image, got {tuple(output.shape)}"
            )
        return (output[self.category] * self.mask.to(output.device, output.dtype)).sum()


class Scores:
    """Per-image target callables as one ``(B,)`` score of a batch's outputs."""

    def __init__(self, functions: Sequence[Callable[[Tensor], Tensor]]) -> None:
        self.functions = list(functions)

    def __len__(self) -> int:
        return len(self.functions)

    def __call__(self, outputs: Tensor) -> Tensor:
        if len(outputs) != len(self.functions):
            raise ValueError(f"{len(self.functions)} target callables for a batch of {len(outputs)} outputs")
        values = [torch.as_tensor(f(o)) for f, o in zip(self.functions, outputs)]
        if any(v.numel() != 1 for v in values):
            shapes = [tuple(v.shape) for v in values]
            raise ValueError(f"each target callable must return one score per image, got shapes {shapes}")
        return torch.stack([v.reshape(()) for v in values])


def is_callable_targets(targets) -> bool:
    """Whether ``targets`` are callables (one, or one per image) rather than class indices."""
    if isinstance(targets, Scores):
        return True
    if callable(targets) and not isinstance(targets, Tensor | int):
        return True
    return isinstance(targets, list | tuple) and bool(targets) and all(callable(t) for t in targets)


def as_scores(targets, batch: int) -> Scores:
    """The :class:`Scores` of callable ``targets`` for ``batch`` images (a single callable for all)."""
    if isinstance(targets, Scores):
        functions = targets.functions
    elif isinstance(targets, list | tuple):
        functions = list(targets)
    else:
        functions = [targets] * batch
    if len(functions) != batch:
        raise ValueError(f"targets must be 1 or {batch} callables (one per image), got {len(functions)}")
    return Scores(functions)


__all__ = [
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget",
    "Scores",
    "SemanticSegmentationTarget",
    "as_scores",
    "is_callable_targets",
]
