"""Forward hooks that are always removed, even when the forward raises."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from torch import nn

HookFn = Callable[[nn.Module, tuple, object], object]


@contextmanager
def forward_hooks(pairs: Iterable[tuple[nn.Module, HookFn]]) -> Iterator[None]:
    """Register ``(module, hook)`` forward hooks for the duration of the ``with`` block."""
    handles = []
    try:
        for module, hook in pairs:
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


class StopForward(Exception):
    """Raised from a hook to end a forward pass early once every needed activation is captured."""
