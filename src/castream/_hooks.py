"""Forward hooks that are always removed, even when the forward raises."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def forward_hooks(pairs: Iterable[tuple[nn.Module, Callable]], *, pre: bool = False) -> Iterator[None]:
    """Register ``(module, hook)`` forward hooks (forward pre-hooks with ``pre=True``) for the ``with``
    block."""
    handles = []
    try:
        for module, hook in pairs:
            register = module.register_forward_pre_hook if pre else module.register_forward_hook
            handles.append(register(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


class StopForward(Exception):
    """Raised from a hook to end a forward pass early once every needed activation is captured."""
