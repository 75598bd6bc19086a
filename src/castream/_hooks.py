"""Forward hooks that are always removed, and a model state that is always restored, even when the
forward raises."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn


@contextmanager
def forward_hooks(
    pairs: Iterable[tuple[nn.Module, Callable]], *, pre: bool = False, with_kwargs: bool = False
) -> Iterator[None]:
    """Register ``(module, hook)`` forward hooks (forward pre-hooks with ``pre=True``; hooks that also
    receive the call's keyword arguments with ``with_kwargs=True``) for the ``with`` block."""
    handles = []
    try:
        for module, hook in pairs:
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            handles.append(register(hook, with_kwargs=with_kwargs))
        yield
    finally:
        for handle in handles:
            handle.remove()


class StopForward(Exception):
    """Raised from a hook to end a forward pass early once every needed activation is captured."""


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and ``requires_grad=False`` everywhere for the block; the exact previous state after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def model_logits(output: object) -> object:
    """The logits of a model output: a Hugging Face ``ModelOutput``'s ``logits``, else the output."""
    logits = getattr(output, "logits", None)
    return logits if isinstance(logits, Tensor) and not isinstance(output, Tensor) else output
