"""The Scorer: how castream turns a model's output into a target's score, in one place."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from ._model import Logits, OutputSelector, check_targets
from ._precision import autocast, check_amp
from .backbones import min_input_size
from .utils import check_int

SCORE_KINDS = ("logit", "softmax", "sigmoid")  # what a target's score is: its logit, or a probability


def target_score(logits: Tensor, targets: Tensor, score: str = "logit") -> Tensor:
    """Each target's score (B,) from ``(B, num_classes)`` logits: its logit (in the logits' dtype, and
    differentiable: what the gradient methods backpropagate), or in float32 its softmax probability over the
    classes or its own sigmoid (multi-label models). Every castream method and metric reads scores here."""
    if score == "logit":
        return logits.gather(1, targets[:, None]).squeeze(1)
    logits = logits.float()
    if score == "softmax":
        return logits.softmax(dim=1).gather(1, targets[:, None]).squeeze(1)
    if score == "sigmoid":
        return logits.gather(1, targets[:, None]).squeeze(1).sigmoid()
    raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}")


class Scorer:
    """The one place that turns a model's output into a target's score: the model, its output selection,
    forward kwargs, score kind, batch size and precision.

    ``logits(x)`` forwards ``x`` in chunks of ``batch_size`` (under ``amp`` autocast when given) and returns
    the checked ``(B, num_classes)`` logits; ``target_scores(logits, targets)`` reads each target's score
    in float32: its logit (``"logit"``), its softmax probability (``"softmax"``, single-label models) or its
    own sigmoid (``"sigmoid"``, multi-label models); ``scores(x, targets)`` does both. Metrics and methods
    accept a Scorer wherever they take a model (a plain model is wrapped), and the metrics take the clean
    images' ``logits=`` when the caller already has them, so a clean forward is never made twice.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        output: OutputSelector = None,
        forward_kwargs: dict | None = None,
        score: str = "softmax",
        batch_size: int = 64,
        amp: str | None = None,
    ) -> None:
        if isinstance(model, Scorer):
            raise TypeError("model is already a Scorer; pass its model, or use the Scorer itself")
        if score not in SCORE_KINDS:
            raise ValueError(f"score must be one of {SCORE_KINDS}, got {score!r}")
        self.score, self.batch_size, self.amp = score, check_int("batch_size", batch_size), check_amp(amp)
        self.call = Logits(model, output, forward_kwargs, min_input_size(model))

    @classmethod
    def of(
        cls,
        model: nn.Module | Scorer,
        *,
        output: OutputSelector = None,
        forward_kwargs: dict | None = None,
        score: str = "softmax",
        batch_size: int = 64,
    ) -> Scorer:
        """``model`` itself when it is a Scorer (then the other arguments must keep their defaults: the
        Scorer already fixes them), else a Scorer wrapping it."""
        if isinstance(model, Scorer):
            given = {"output": output, "forward_kwargs": forward_kwargs, "score": score}
            defaults = {"output": None, "forward_kwargs": None, "score": "softmax"}
            changed = [
                k for k in given if given[k] != defaults[k] and not (k == "forward_kwargs" and not given[k])
            ]
            if changed:
                raise ValueError(
                    f"{', '.join(changed)} given next to a Scorer, which fixes them; set them on the Scorer"
                )
            return model
        return cls(model, output=output, forward_kwargs=forward_kwargs, score=score, batch_size=batch_size)

    @property
    def model(self) -> nn.Module:
        return self.call.model

    @property
    def output(self) -> OutputSelector:
        return self.call.output

    @property
    def forward_kwargs(self) -> dict:
        return self.call.forward_kwargs

    def logits(self, x: Tensor) -> Tensor:
        """Checked logits of ``x``, forwarded ``batch_size`` images at a time."""
        with autocast(x.device, self.amp) if self.amp else contextlib.nullcontext():
            return torch.cat([self.call(chunk) for chunk in x.split(self.batch_size)])

    def target_scores(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Each target's score (B,) in float32 (see the class)."""
        return target_score(logits.float(), targets, self.score)

    def scores(self, x: Tensor, targets: Tensor) -> Tensor:
        return self.target_scores(self.logits(x), targets)

    def clean(self, images: Tensor, targets, logits: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(targets, clean logits) of ``images``: ``logits`` when given (checked: one row per image), else a
        forward; ``targets`` None means the predicted class."""
        if logits is None:
            logits = self.logits(images)
        elif not isinstance(logits, Tensor) or logits.dim() != 2 or len(logits) != len(images):
            raise ValueError(
                f"logits must be the clean images' ({len(images)}, num_classes) logits, got "
                f"{tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__}"
            )
        return check_targets(targets, logits), logits
