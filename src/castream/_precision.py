"""Reduced precision and memory layout: how castream runs a model fast, and keeps fragile steps exact.

The PyTorch way is the caller's own ``torch.autocast`` block and a ``channels_last`` model: every castream
method and metric works inside both. castream then runs only the *model* in reduced precision. Its own
numerically sensitive steps (the weighted sum of feature maps, upsampling and min-max normalization,
softmax probabilities, AUCs, and the mask optimization of Opti-CAM and Extremal Perturbation) run inside
:func:`full_precision` on float32 copies. ``EvalConfig.amp`` / ``--amp`` and ``channels_last`` /
``--channels-last`` do the same for the runner and the CLI.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str | None) -> str | None:
    """``None`` (full precision), ``"bf16"`` or ``"fp16"``."""
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(f"amp must be None or one of {list(AMP_DTYPES)}, got {amp!r}")
    return amp


def autocast(device: torch.device | str, amp: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device``'s type with the dtype named by ``amp`` (a no-op for ``None``)."""
    if check_amp(amp) is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp])


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Autocast off, on the CPU and on CUDA, for a step that must stay in the tensors' own precision."""
    with torch.autocast("cpu", enabled=False):
        if torch.cuda.is_available():
            with torch.autocast("cuda", enabled=False):
                yield
        else:
            yield


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32, or float64 when it already is."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def reduced(x: Tensor) -> bool:
    """Whether ``x`` has less precision than float32 (an autocast output): bf16 or fp16."""
    return x.is_floating_point() and torch.finfo(x.dtype).bits < 32
