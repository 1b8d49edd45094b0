"""The resequencer: per entity, apply events once each, in sequence.

Brokers keep order per key at best; retries, redeliveries, replays and several
producers still let an entity's events arrive out of order. A :class:`Resequencer`
remembers, per entity, the highest sequence applied (the entity's version, or a
stage of a flow) in a :class:`~eventbus.patterns.ordering.stores.SequenceStore`,
and for each event decides:

- **stale** (at or below the last applied: a duplicate, a late copy): not applied;
  logged and counted (``on_stale="ignore"``) or also kept in the store for a person
  (``on_stale="keep"``, listed by :meth:`Resequencer.stale_events`);
- **next**: applied, and the mark moves on, in the same unit of work as the
  handler (one database transaction on SQL stores);
- **early** (past the next one: something in between has not arrived):
  ``on_gap="wait"`` hands it back to the broker (:class:`EarlyEventError`, a
  redelivery request): it is *not acknowledged*, so it survives a restart, and
  comes back after a short delay, by which time the gap may have filled; after
  ``max_waits`` deliveries it is applied anyway (the gap is given up, logged).
  ``on_gap="apply"`` applies it at once (newest wins; what it skipped is stale
  when it turns up).

Nothing is ever held in memory: an early event waits in the broker, a kept stale
event in the store. Waiting needs a broker that redelivers (at-least-once
subscriptions); on one that does not, use ``on_gap="apply"``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, Literal, TypeVar

from eventbus._deprecation import Renamed, renamed
from eventbus.backoff import Backoff
from eventbus.context import Context
from eventbus.errors import ConfigurationError, EventBusError
from eventbus.middleware.base import RedeliveryRequested
from eventbus.patterns.ordering.stores import (
    MemorySequenceStore,
    SequenceSession,
    SequenceStore,
    StaleEvent,
)
from eventbus.patterns.sql import Transaction

log = logging.getLogger("eventbus.ordering")

E = TypeVar("E")
GuardedHandler = Callable[[E, Context], Awaitable[None]]
GapPolicy = Literal["wait", "apply"]
StalePolicy = Literal["ignore", "keep"]


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
    (0 when nothing was): for a mark you keep in a table of your own."""
    if sequence <= last:
        return Verdict.STALE
    return Verdict.APPLY if sequence == last + 1 else Verdict.EARLY


class EarlyEventError(RedeliveryRequested, EventBusError):
    """An event came before its predecessor: handed back to the broker, redelivered
    after ``delay`` seconds (raised by :meth:`Resequencer.apply` with ``on_gap="wait"``)."""

    def __init__(self, entity_id: str, sequence: int, expected: int, delay: float) -> None:
        super().__init__(
            delay,
            f"{entity_id}: sequence {sequence} came before {expected}; redelivered in {delay:.2f}s",
        )
        self.entity_id = entity_id
        self.sequence = sequence
        self.expected = expected


class Resequencer:
    """Applies each entity's events once, in sequence (see the module docs)::

        sequencer = Resequencer("order-view", SQLSequenceStore(db))

        @bus.subscribe(OrderEvent, group="order-view")
        @sequencer(entity=lambda e: e.order_id, sequence=lambda e: e.version)
        async def project(event: OrderEvent, ctx: Context) -> None: ...

    ``scope`` names what is guarded (one projection or saga). ``first`` is the
    sequence of an entity's first event (what ``"wait"`` expects when nothing was
    applied). ``wait`` spaces the redeliveries of an early event (by delivery
    count), ``max_waits`` bounds them.
    """

    def __init__(
        self,
        scope: str,
        store: SequenceStore | None = None,
        *,
        on_gap: GapPolicy = "wait",
        on_stale: StalePolicy = "ignore",
        first: int = 1,
        wait: Backoff | None = None,
        max_waits: int = 10,
    ) -> None:
        if on_gap not in ("wait", "apply") or on_stale not in ("ignore", "keep") or max_waits < 1:
            raise ConfigurationError(
                f"Resequencer({scope!r}) needs on_gap 'wait' or 'apply', on_stale 'ignore' "
                f"or 'keep' and max_waits >= 1; got {on_gap!r}, {on_stale!r}, {max_waits}"
            )
        self.scope = scope
        self.store: SequenceStore = store or MemorySequenceStore()
        self.on_gap: GapPolicy = on_gap
        self.on_stale: StalePolicy = on_stale
        self.first = first
        self.wait = wait or Backoff(initial=0.05, max_delay=2.0)
        self.max_waits = max_waits
        self.stale = 0
        """How many stale events were not applied (for metrics and tests)."""

    def __call__(
        self, *, entity: Callable[[Any], str], sequence: Callable[[Any], int]
    ) -> Callable[[GuardedHandler[E]], GuardedHandler[E]]:
        """Decorate an ``(event, ctx)`` handler: it runs for an entity's events in
        sequence, once each."""

        def decorate(fn: GuardedHandler[E]) -> GuardedHandler[E]:
            @functools.wraps(fn)
            async def guarded(event: E, ctx: Context) -> None:
                await self.apply(
                    entity(event), sequence(event), lambda: fn(event, ctx), event=event, ctx=ctx
                )

            return guarded

        return decorate

    async def apply(
        self,
        entity_id: str,
        sequence: int,
        handler: Callable[[], Awaitable[None]],
        *,
        event: Any = None,
        ctx: Context | None = None,
        tx: Transaction | None = None,
    ) -> bool:
        """Run ``handler`` if ``sequence`` is the entity's next; returns whether it ran.

        Raises :class:`EarlyEventError` for an early event under ``on_gap="wait"`` (let it
        propagate from a bus handler: the broker redelivers it). With ``tx`` the check
        joins that transaction (the caller commits it), so the handler's writes and
        the new mark commit together.
        """
        if tx is not None:
            return await self._apply(self.store.join(tx), entity_id, sequence, handler, event, ctx)
        async with self.store.unit_of_work() as session:
            return await self._apply(session, entity_id, sequence, handler, event, ctx)

    async def seed(self, entity_id: str, last: int) -> None:
        """Record ``last`` as the entity's last applied sequence (a memory store at
        start, from what the handler's own state says it applied)."""
        async with self.store.unit_of_work() as session:
            await session.last(self.scope, entity_id)  # creates (and locks) the row
            await session.advance(self.scope, entity_id, last)

    async def stale_events(self) -> list[StaleEvent]:
        """The stale events kept (``on_stale="keep"``), oldest first."""
        return await self.store.stale(self.scope)

    async def _apply(
        self,
        session: SequenceSession,
        entity_id: str,
        sequence: int,
        handler: Callable[[], Awaitable[None]],
        event: Any,
        ctx: Context | None,
    ) -> bool:
        last = await session.last(self.scope, entity_id)
        if last is not None and sequence <= last:
            await self._stale(session, entity_id, sequence, last, event, ctx)
            return False
        expected = self.first if last is None else last + 1
        if self.on_gap == "wait" and sequence > expected:
            self._early(entity_id, sequence, expected, ctx)
        await handler()
        await session.advance(self.scope, entity_id, sequence)
        return True

    def _early(self, entity_id: str, sequence: int, expected: int, ctx: Context | None) -> None:
        """Raise EarlyEventError, unless the event came back ``max_waits`` times already."""
        deliveries = ctx.delivery.attempt if ctx is not None else 1
        if deliveries <= self.max_waits:
            raise EarlyEventError(entity_id, sequence, expected, self.wait.delay(deliveries))
        log.warning(
            "%s: %s waited %d deliveries for sequence %d; applying %d without it "
            "(it is stale if it comes)",
            self.scope,
            entity_id,
            deliveries,
            expected,
            sequence,
        )

    async def _stale(
        self,
        session: SequenceSession,
        entity_id: str,
        sequence: int,
        last: int,
        event: Any,
        ctx: Context | None,
    ) -> None:
        self.stale += 1
        event_type = ctx.envelope.type if ctx is not None else type(event).__name__
        log.info(
            "%s: stale %s for %s (sequence %d, already at %d) %s",
            self.scope,
            event_type,
            entity_id,
            sequence,
            last,
            "kept" if self.on_stale == "keep" else "ignored",
        )
        if self.on_stale == "keep":
            data = event.model_dump_json() if hasattr(event, "model_dump_json") else ""
            await session.keep(
                StaleEvent(
                    self.scope,
                    entity_id,
                    sequence,
                    last,
                    event_type,
                    ctx.envelope.id if ctx is not None else "",
                    data,
                )
            )


# Renamed for one vocabulary (exceptions end in Error, SQL in capitals); the old
# spelling warns for one release.
_RENAMED: Renamed = {
    "EarlyEvent": ("eventbus.patterns.ordering.EarlyEventError", lambda: EarlyEventError)
}


def __getattr__(name: str) -> Any:
    return renamed(__name__, name, _RENAMED)
