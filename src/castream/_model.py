"""Calling a model the way every castream method and metric does: frozen in eval mode, logits selected
and checked, the caller's state restored afterwards."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._hooks import model_logits

OutputSelector = int | str | Callable[[Any], Tensor] | None


class Logits:
    """``Logits(model, output, forward_kwargs)(x)`` -> checked ``(B, num_classes)`` logits.

    ``output`` selects the logits when the model returns a tuple/dict (an index, a key or a callable);
    ``forward_kwargs`` go to every forward (e.g. ``{"pooling": "gap"}`` for a StreamModel).
    """

    def __init__(
        self,
        model: nn.Module,
        output: OutputSelector = None,
        forward_kwargs: dict | None = None,
        min_size: int = 1,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.output = output
        self.forward_kwargs = dict(forward_kwargs or {})
        self.min_size = min_size  # backbones.min_input_size(model), computed by the caller

    def select(self, out: Any, any_shape: bool = False) -> Tensor:
        if self.output is not None and not callable(self.output):
            if (isinstance(out, Mapping) and self.output in out) or (
                isinstance(out, tuple | list)
                and isinstance(self.output, int)
                and -len(out) <= self.output < len(out)
            ):
                out = out[self.output]
            else:
                valid = (
                    f"keys {list(out)}"
                    if isinstance(out, Mapping)
                    else f"indices 0..{len(out) - 1}"
                    if isinstance(out, tuple | list)
                    else "none (it returns a single tensor: leave output=None)"
                )
                raise ValueError(
                    f"output={self.output!r} does not select anything from the model's {type(out).__name__} "
                    f"output; valid: {valid}"
                )
        elif self.output is not None:
            out = self.output(out)
        else:
            out = model_logits(out)  # a Hugging Face ModelOutput: its logits
        if not isinstance(out, Tensor):
            raise TypeError(
                f"{type(self.model).__name__} returned a {type(out).__name__}; pass output= (an index, a key "
                "or a callable) to select the logits"
            )
        if out.dim() != 2 and not any_shape:
            raise ValueError(f"expected logits of shape (B, num_classes), got {tuple(out.shape)}")
        return out

    def __call__(self, x: Tensor, *, any_shape: bool = False, **extra: Any) -> Tensor:
        """Checked logits; ``any_shape``: an output of another shape is accepted (a segmentation model's
        (B, C, H, W) scores, read by callable targets)."""
        parameter = next(self.model.parameters(), None)
        if parameter is not None and parameter.is_meta:
            raise ValueError(
                f"{type(self.model).__name__} has its parameters on the meta device (no values); load its "
                "weights (e.g. load_state_dict(..., assign=True)) before explaining or evaluating it"
            )
        if (
            parameter is not None
            and parameter.is_floating_point()
            and parameter.dtype != x.dtype
            and not torch.is_autocast_enabled(x.device.type)
        ):
            raise TypeError(
                f"images are {x.dtype} but {type(self.model).__name__}'s parameters are {parameter.dtype}; "
                f"cast one of them (e.g. images.to({parameter.dtype}))"
            )
        minimum = self.min_size
        if min(x.shape[-2:]) < minimum:
            raise ValueError(
                f"images of {x.shape[-2]}x{x.shape[-1]} pixels are smaller than {type(self.model).__name__} "
                f"accepts: its last stage has stride {minimum}, so each side must be at least {minimum} "
                "pixels"
            )
        try:
            out = self.model(x, **self.forward_kwargs, **extra)
        except RuntimeError as err:
            if "too small" not in str(err) and "smaller than kernel" not in str(err).lower():
                raise
            raise ValueError(
                f"images of {x.shape[-2]}x{x.shape[-1]} pixels are smaller than {type(self.model).__name__} "
                f"accepts ({str(err).splitlines()[0]}); use larger images"
            ) from None
        logits = self.select(out, any_shape)
        if not torch.isfinite(logits).all():
            raise ValueError(f"{type(self.model).__name__} produced NaN or Inf logits")
        return logits


def check_images(images: Tensor) -> Tensor:
    if not isinstance(images, Tensor) or not images.is_floating_point():
        raise TypeError(f"expected a floating-point image tensor, got {type(images).__name__}")
    if images.dim() != 4 or 0 in images.shape:
        raise ValueError(f"expected a non-empty batch of images (B, C, H, W), got {tuple(images.shape)}")
    return images


def check_targets(targets, logits: Tensor) -> Tensor:
    """Class indices ``(B,)``: given ones (an int or B indices, validated) or the predicted class."""
    batch, classes = logits.shape
    if targets is None:
        return logits.argmax(dim=1)
    if isinstance(targets, Tensor | np.ndarray | np.integer) and np.ndim(targets) == 0:
        targets = int(targets.item()) if not isinstance(targets, np.integer) else int(targets)
    if isinstance(targets, int) and not isinstance(targets, bool):
        targets = torch.full((batch,), targets, dtype=torch.long)
    if isinstance(targets, str | bytes) or (
        isinstance(targets, list | tuple)
        and not all(isinstance(t, int | np.integer) and not isinstance(t, bool) for t in targets)
    ):
        raise TypeError(f"targets must be an int or {batch} integer class indices, got {targets!r}")
    t = torch.as_tensor(targets, device=logits.device)
    if t.dim() != 1 or t.shape[0] != batch or t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(
            f"targets must be an int or {batch} integer class indices, got shape {tuple(t.shape)}"
        )
    if t.min() < 0 or t.max() >= classes:
        raise ValueError(f"targets must lie in [0, {classes}), got {t.tolist()}")
    return t.long()
