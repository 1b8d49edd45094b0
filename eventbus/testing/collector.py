"""``Collector``: items recorded as a handler sees them, and an event-driven wait for them.

Needs no test framework (``eventbus.testing`` imports without pytest)::

    seen: Collector[OrderPlaced] = Collector("orders")

    @bus.subscribe(OrderPlaced)
    async def record(event: OrderPlaced) -> None:
        seen.add(event)

    ...
    await seen.wait_count(3)          # fails with what arrived after the timeout
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")

PATIENCE = float(os.environ.get("EVENTBUS_CONFORMANCE_PATIENCE", "1") or 1)
"""Multiplies every wait (and the conformance suite's case timeouts), for slow brokers
or CI machines."""
DEFAULT_WAIT = 15.0 * PATIENCE
"""Seconds :meth:`Collector.wait` waits unless told otherwise."""


class Collector(Generic[T]):
    """Items recorded as they happen; ``wait`` blocks until a condition holds or fails.

    (Not the transactional :class:`~eventbus.patterns.inbox.Inbox`, which records
    handled event ids in a database.)
    """

    def __init__(self, name: str = "collector") -> None:
        self.name = name
        self.items: list[T] = []
        self._changed = asyncio.Event()

    def add(self, item: T) -> None:
        """Record ``item`` and wake whoever waits."""
        self.items.append(item)
        self._changed.set()

    def __len__(self) -> int:
        return len(self.items)

    async def wait(
        self, condition: Callable[[list[T]], bool], what: str, timeout: float = DEFAULT_WAIT
    ) -> list[T]:
        """Return the items once ``condition(items)`` holds; fail after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition(self.items):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.name}: timed out after {timeout:.1f}s waiting for {what}; "
                    f"got {len(self.items)} item(s): {_preview(self.items)}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return list(self.items)

    async def wait_count(self, count: int, timeout: float = DEFAULT_WAIT) -> list[T]:
        """Return the items once there are at least ``count``."""
        return await self.wait(lambda items: len(items) >= count, f"{count} item(s)", timeout)


def _preview(items: Sequence[object]) -> str:
    text = repr(list(items[:10]))
    return text + (f" ... and {len(items) - 10} more" if len(items) > 10 else "")
