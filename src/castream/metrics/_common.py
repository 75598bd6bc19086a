"""Helpers shared by the metrics: the Scorer of a call and its frozen, gradient-free session, map checks,
chunked scores of perturbed images."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from .._hooks import frozen_eval
from .._model import OutputSelector, check_images
from .._scorer import Scorer, target_score
from ..maps import normalize_maps

DEFAULT_BATCH = 64


def scorer_of(
    model: nn.Module | Scorer,
    *,
    output: OutputSelector = None,
    forward_kwargs: dict | None = None,
    scores: str = "softmax",
    batch_size: int | None = None,
) -> Scorer:
    """The Scorer a metric call reads probabilities through: ``model`` itself when it is a Scorer (the
    other arguments then keep their defaults), else one wrapping it with these settings."""
    if isinstance(model, Scorer):
        if batch_size is not None:
            raise ValueError("batch_size given next to a Scorer, which fixes it; set it on the Scorer")
        scorer = Scorer.of(model, output=output, forward_kwargs=forward_kwargs, score=scores)
    else:
        check_scores(scores)
        size = DEFAULT_BATCH if batch_size is None else batch_size
        scorer = Scorer(model, output=output, forward_kwargs=forward_kwargs, score=scores, batch_size=size)
    if scorer.score not in SCORES:
        raise ValueError(
            f"this metric compares class probabilities: the Scorer's score must be one of {SCORES}, got "
            f"{scorer.score!r}"
        )
    return scorer


@contextlib.contextmanager
def evaluation(scorer: Scorer) -> Iterator[Scorer]:
    """``scorer``'s model frozen in eval mode without autograd for the call; its state restored after."""
    with frozen_eval(scorer.model), torch.no_grad():
        yield scorer


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


SCORES = ("softmax", "sigmoid")  # class probabilities of a single-label / multi-label classifier


def check_scores(scores: str) -> str:
    if scores not in SCORES:
        raise ValueError(f"scores must be one of {SCORES}, got {scores!r}")
    return scores


def probability(logits: Tensor, targets: Tensor, scores: str = "softmax") -> Tensor:
    """Probability of each target class in float32: softmax over the classes, or the class's own sigmoid
    (``scores="sigmoid"``, for multi-label classifiers such as the authors' VOC models)."""
    return target_score(logits, targets, check_scores(scores))


def chunked_scores(
    scorer: Scorer, total: int, build: Callable[[Tensor], tuple[Tensor, Tensor]], device
) -> Tensor:
    """Target scores of ``total`` perturbed images built chunk by chunk: ``build(flat_index)`` returns
    ``(images, targets)`` for a 1-D tensor of indices. One forward per chunk of the Scorer's batch size."""
    out = torch.empty(total, device=device)
    for flat in torch.arange(total, device=device).split(scorer.batch_size):
        images, targets = build(flat)
        out[flat] = scorer.scores(images, targets)
    return out
