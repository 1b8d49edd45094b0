"""The two guards :class:`~eventbus.patterns.ordering.Resequencer` replaces, kept for one
release. Importing either name warns (``DeprecationWarning``) and names the new one.

- ``OrderingGuard`` (``eventbus.patterns.ordering``): in-memory reassembly with
  ``accept(entity, sequence, item)``. It used to hold an early event in memory
  after the bus had acknowledged it, losing it on a restart; inside a bus handler
  it now hands an early event back to the broker instead (:class:`EarlyEventError`).
  Outside a handler (reordering a list) it still holds early items.
- ``SequenceGuard`` (``eventbus.patterns.sagas``): ``Resequencer(on_gap="apply")``;
  its ``on_stale="park"`` is ``on_stale="keep"``, ``parked()`` is ``stale_events()``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Generic, Literal, TypeVar

from eventbus.context import current_envelope
from eventbus.errors import ConfigurationError
from eventbus.patterns.ordering.guard import EarlyEventError, Resequencer, Verdict, classify
from eventbus.patterns.ordering.stores import SequenceStore, StaleEvent

T = TypeVar("T")
log = logging.getLogger("eventbus.ordering")

_RENAMED = {
    "OrderingGuard": "eventbus.patterns.ordering.Resequencer (a bus handler decorated "
    "with it; on_gap='wait' is what 'park' meant)",
    "SequenceGuard": "eventbus.patterns.ordering.Resequencer(scope, store, "
    "on_gap='apply'); on_stale='park' is now 'keep', parked() is "
    "stale_events()",
    "ParkedEvent": "eventbus.patterns.ordering.StaleEvent",
}


def deprecated(name: str) -> object:
    """The deprecated ``name``, with a DeprecationWarning naming what replaces it
    (for the modules' ``__getattr__``)."""
    warnings.warn(
        f"{name} is deprecated and goes in the next release; use {_RENAMED[name]}",
        DeprecationWarning,
        stacklevel=3,
    )
    return {
        "OrderingGuard": OrderingGuard,
        "SequenceGuard": SequenceGuard,
        "ParkedEvent": StaleEvent,
    }[name]


class SequenceGuard(Resequencer):
    """Deprecated: ``Resequencer(scope, store, on_gap="apply")``."""

    def __init__(
        self,
        scope: str,
        store: SequenceStore | None = None,
        *,
        on_stale: Literal["ignore", "park"] = "ignore",
    ) -> None:
        super().__init__(
            scope, store, on_gap="apply", on_stale="keep" if on_stale == "park" else "ignore"
        )

    @property
    def ignored(self) -> int:
        """How many stale events were not applied (``Resequencer.stale``)."""
        return self.stale

    async def parked(self) -> list[StaleEvent]:
        """The stale events kept (``Resequencer.stale_events``)."""
        return await self.stale_events()


class OrderingGuard(Generic[T]):
    """Deprecated: use :class:`~eventbus.patterns.ordering.Resequencer`.

    ``on_gap``: ``"park"`` holds early items until the gap fills (inside a bus
    handler: hands them back to the broker), ``"skip"`` applies them at once.
    ``max_parked``: early items held (or, in a handler, redeliveries of one item)
    before the guard stops waiting for the gap, logs a warning and applies them.
    """

    def __init__(self, *, on_gap: Literal["park", "skip"] = "park", max_parked: int = 1000) -> None:
        if on_gap not in ("park", "skip") or max_parked < 1:
            raise ConfigurationError(
                f"OrderingGuard needs on_gap 'park' or 'skip' and max_parked >= 1, "
                f"not {on_gap!r}, {max_parked}"
            )
        self.on_gap = on_gap
        self.max_parked = max_parked
        self._last: dict[str, int] = {}
        self._parked: dict[str, dict[int, T]] = {}
        self._bounced: dict[tuple[str, int], int] = {}
        self.stale = 0
        """How many stale events were ignored (for metrics and tests)."""

    def seed(self, entity: str, last: int) -> None:
        """Start ``entity`` at ``last`` (its version in the projection's own store)."""
        self._last[entity] = last

    def last(self, entity: str) -> int:
        """The last sequence applied for ``entity`` (0 when none)."""
        return self._last.get(entity, 0)

    def parked(self, entity: str) -> list[int]:
        """The sequences held for ``entity``, lowest first."""
        return sorted(self._parked.get(entity, {}))

    def accept(self, entity: str, sequence: int, item: T) -> list[T]:
        """The items to apply now, in sequence: ``[]`` for a stale or held event,
        else ``item`` followed by the held successors it unblocks. Inside a bus
        handler an early event raises :class:`EarlyEventError` instead of being held: the
        broker keeps it (unacknowledged) and redelivers it."""
        last = self.last(entity)
        verdict = classify(last, sequence)
        if verdict is Verdict.STALE or sequence in self._parked.get(entity, {}):
            self.stale += 1
            self._bounced.pop((entity, sequence), None)
            log.debug(
                "ignored stale event %s of %s (applied up to %s, or already held)",
                sequence,
                entity,
                last,
            )
            return []
        if verdict is Verdict.EARLY and self.on_gap == "park":
            if current_envelope.get() is not None:
                return self._bounce(entity, sequence, item, last)
            parked = self._parked.setdefault(entity, {})
            parked[sequence] = item
            if len(parked) <= self.max_parked:
                return []
            log.warning(
                "%s: %d events parked waiting for sequence %d; applying them without it "
                "(it will be ignored as stale if it comes)",
                entity,
                len(parked),
                last + 1,
            )
            return self._release(entity, min(parked) - 1)
        self._bounced.pop((entity, sequence), None)
        self._last[entity] = sequence
        return [item, *self._release(entity, sequence)]

    def _bounce(self, entity: str, sequence: int, item: T, last: int) -> list[T]:
        # Holding it here would lose it: the bus acks the delivery once the handler
        # returns. Handed back, it waits in the broker and survives a restart.
        times = self._bounced[(entity, sequence)] = self._bounced.get((entity, sequence), 0) + 1
        if times <= self.max_parked:
            raise EarlyEventError(entity, sequence, last + 1, min(2.0, 0.05 * 2 ** (times - 1)))
        log.warning(
            "%s: sequence %d came back %d times waiting for %d; applying it without it",
            entity,
            sequence,
            times,
            last + 1,
        )
        self._bounced.pop((entity, sequence), None)
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
