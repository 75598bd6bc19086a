"""Helpers shared by the metrics: one frozen, gradient-free session per call, map checks, chunked
probabilities of perturbed images."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from .._hooks import frozen_eval
from .._model import Logits, OutputSelector, check_images, check_targets
from ..backbones import min_input_size
from ..maps import normalize_maps

DEFAULT_BATCH = 64


@contextlib.contextmanager
def evaluation(
    model: nn.Module, output: OutputSelector = None, forward_kwargs: dict | None = None
) -> Iterator[Logits]:
    """The model frozen in eval mode without autograd; yields the logits function. State restored after."""
    with frozen_eval(model), torch.no_grad():
        yield Logits(model, output, forward_kwargs, min_input_size(model))


def check_maps(maps: Tensor, images: Tensor, normalize: bool = False) -> Tensor:
    """Maps ``(B, H, W)`` matching the images, finite, in [0, 1] (or min-max normalized on request)."""
    check_images(images)
    expected = (images.shape[0], *images.shape[-2:])
    if not isinstance(maps, Tensor):
        raise TypeError(
            f"maps must be a torch.Tensor of shape {expected} (B, H, W), got {type(maps).__name__}"
        )
    if tuple(maps.shape) != expected:
        raise ValueError(f"expected maps of shape {expected} (B, H, W), got {getattr(maps, 'shape', maps)}")
    if normalize:
        check_map_values(maps, in_range=False)
        return normalize_maps(maps.to(images.dtype))
    check_map_values(maps, hint="; pass normalize=True to min-max normalize them")
    return maps.to(images.dtype)


def check_map_values(maps: Tensor, *, in_range: bool = True, hint: str = "") -> None:
    """Every metric's check of map values: finite and (with ``in_range``) in [0, 1]."""
    if not torch.isfinite(maps).all():
        raise ValueError("maps contain NaN or Inf")
    if in_range and maps.numel() and (maps.min() < 0 or maps.max() > 1):
        low, high = float(maps.min()), float(maps.max())
        raise ValueError(f"maps must lie in [0, 1]{hint} (got values in [{low:.3g}, {high:.3g}])")


def resolve_targets(fn: Logits, images: Tensor, targets, batch_size: int) -> tuple[Tensor, Tensor]:
    """Targets (given, or predicted on the clean images) and the clean images' logits."""
    logits = torch.cat([fn(chunk) for chunk in images.split(batch_size)])
    return check_targets(targets, logits), logits


SCORES = ("softmax", "sigmoid")  # class probabilities of a single-label / multi-label classifier


def check_scores(scores: str) -> str:
    if scores not in SCORES:
        raise ValueError(f"scores must be one of {SCORES}, got {scores!r}")
    return scores


def probability(logits: Tensor, targets: Tensor, scores: str = "softmax") -> Tensor:
    """Probability of each target class in float32: softmax over the classes, or the class's own sigmoid
    (``scores="sigmoid"``, for multi-label classifiers such as the authors' VOC models)."""
    logits = logits.float()
    if check_scores(scores) == "sigmoid":
        return logits.gather(1, targets[:, None]).squeeze(1).sigmoid()
    return logits.softmax(dim=1).gather(1, targets[:, None]).squeeze(1)


def chunked_probabilities(
    fn: Logits,
    total: int,
    build: Callable[[Tensor], tuple[Tensor, Tensor]],
    batch_size: int,
    device,
    scores: str = "softmax",
) -> Tensor:
    """Target probabilities of ``total`` perturbed images built chunk by chunk: ``build(flat_index)``
    returns ``(images, targets)`` for a 1-D tensor of indices. One forward per chunk."""
    out = torch.empty(total, device=device)
    for flat in torch.arange(total, device=device).split(batch_size):
        images, targets = build(flat)
        out[flat] = probability(fn(images), targets, scores)
    return out
