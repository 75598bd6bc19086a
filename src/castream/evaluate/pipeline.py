"""The runner's two background lanes: batches read and decoded one ahead of the device, and the host work
(CPU metrics, shard records) one batch behind it, in order, its errors raised in the main thread."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


def prefetched(read: Callable[[Any], Any], items: Sequence) -> Iterator[Any]:
    """``read(item)`` of each item in turn; the next one is read in a background thread while the caller
    works on the current one."""
    with ThreadPoolExecutor(1, thread_name_prefix="castream-load") as pool:
        pending = pool.submit(read, items[0]) if items else None
        for k in range(len(items)):
            found = pending.result()
            pending = pool.submit(read, items[k + 1]) if k + 1 < len(items) else None
            yield found


class HostLane:
    """``submit(work)`` runs ``work`` in a background thread after the previously submitted work is done
    (whose error is raised here, in the caller's thread), so the host is at most one item behind and
    shard records keep their order. Use as a context manager: leaving it waits for the last item."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="castream-host")
        self._last: Future | None = None

    def submit(self, work: Callable[[], Any]) -> None:
        if self._last is not None:
            self._last.result()
        self._last = self._pool.submit(work)

    def __enter__(self) -> HostLane:
        return self

    def __exit__(self, kind, error, trace) -> None:
        try:
            if self._last is not None and kind is None:
                self._last.result()
        finally:
            self._pool.shutdown(wait=True)
