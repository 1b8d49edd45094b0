"""Out-of-order guard: apply each entity's events in sequence, ignore stale ones, park early ones.

Brokers reorder (a redelivery after a later message, two partitions, a replay),
so a projection or a saga that applies ``OrderShipped`` v3 before ``OrderPaid``
v2 ends in a wrong state. Give events a per-entity sequence (the entity's
version, as an event store assigns) and let the guard decide::

    guard: OrderingGuard[OrderEvent] = OrderingGuard()

    @bus.subscribe(OrderEvent)
    async def project(event: OrderEvent) -> None:
        for ready in guard.accept(event.order_id, event.version, event):
            apply(ready)                     # in sequence, each once

- an event at or below the last applied sequence is **stale** (a duplicate or
  a late copy): ignored;
- the next sequence is applied, followed by any parked successors it unblocks;
- a later one is **parked** until the gap fills (``on_gap="park"``), or applied
  at once, making everything before it stale (``on_gap="skip"``).

The guard keeps its state in memory: seed it from the projection's stored
versions at start (:meth:`OrderingGuard.seed`). Where the last version lives in
a database row, :func:`classify` answers the same question for one event.
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import Generic, Literal, TypeVar

from eventbus.errors import ConfigurationError

T = TypeVar("T")
log = logging.getLogger("eventbus.ordering")


class Verdict(Enum):
    """What to do with an event given the entity's last applied sequence."""

    APPLY = "apply"
    """It is the next one."""
    STALE = "stale"
    """At or below the last applied: a duplicate or late copy; ignore it."""
    EARLY = "early"
    """Past the next one: something in between has not arrived yet."""


def classify(last: int, sequence: int) -> Verdict:
    """The verdict for an event numbered ``sequence`` when ``last`` was applied last
    (0 when nothing was)."""
    if sequence <= last:
        return Verdict.STALE
    return Verdict.APPLY if sequence == last + 1 else Verdict.EARLY


class OrderingGuard(Generic[T]):
    """Per-entity sequence guard (see the module docs).

    ``on_gap``: ``"park"`` holds early events until the gap fills, ``"skip"``
    applies them at once. ``max_parked``: events parked per entity before the
    guard stops waiting for the gap, logs a warning and applies what it holds.
    """

    def __init__(self, *, on_gap: Literal["park", "skip"] = "park",
                 max_parked: int = 1000) -> None:
        if on_gap not in ("park", "skip") or max_parked < 1:
            raise ConfigurationError(
                f"OrderingGuard needs on_gap 'park' or 'skip' and max_parked >= 1, "
                f"not {on_gap!r}, {max_parked}"
            )
        self.on_gap = on_gap
        self.max_parked = max_parked
        self._last: dict[str, int] = {}
        self._parked: dict[str, dict[int, T]] = {}
        self.stale = 0
        """How many stale events were ignored (for metrics and tests)."""

    def seed(self, entity: str, last: int) -> None:
        """Start ``entity`` at ``last`` (its version in the projection's own store)."""
        self._last[entity] = last

    def last(self, entity: str) -> int:
        """The last sequence applied for ``entity`` (0 when none)."""
        return self._last.get(entity, 0)

    def parked(self, entity: str) -> list[int]:
        """The sequences parked for ``entity``, lowest first."""
        return sorted(self._parked.get(entity, {}))

    def accept(self, entity: str, sequence: int, item: T) -> list[T]:
        """The items to apply now, in sequence: ``[]`` for a stale or parked event,
        else ``item`` followed by the parked successors it unblocks."""
        last = self.last(entity)
        verdict = classify(last, sequence)
        if verdict is Verdict.STALE or sequence in self._parked.get(entity, {}):
            self.stale += 1
            log.debug("ignored stale event %s of %s (applied up to %s, or already parked)",
                      sequence, entity, last)
            return []
        if verdict is Verdict.EARLY and self.on_gap == "park":
            parked = self._parked.setdefault(entity, {})
            parked[sequence] = item
            if len(parked) <= self.max_parked:
                return []
            log.warning(
                "%s: %d events parked waiting for sequence %d; applying them without it "
                "(it will be ignored as stale if it comes)", entity, len(parked), last + 1)
            return self._release(entity, min(parked) - 1)
        self._last[entity] = sequence
        return [item, *self._release(entity, sequence)]

    def _release(self, entity: str, last: int) -> list[T]:
        parked = self._parked.get(entity, {})
        ready: list[T] = []
        while last + 1 in parked:
            last += 1
            ready.append(parked.pop(last))
        self._last[entity] = max(self._last.get(entity, 0), last)
        if not parked:
            self._parked.pop(entity, None)
        return ready
