"""Out-of-order guard: per entity, an event older than the last one applied is not applied.

Brokers keep order per key at best, and retries, redeliveries and several
producers still let an old event arrive after a newer one. A saga (or a
projection) that applied "order 7 cancelled" must not then apply a late
"order 7 charged". :class:`SequenceGuard` remembers, per entity, the highest
sequence (a version, or a stage of the flow) applied; an event at or below it is
*stale*: ignored (logged, counted) or parked (kept in a table you can list, for
a person or a job to look at). A newer one is applied even across a gap (the
newest version wins; the ones it skipped are stale when they turn up).

::

    guard = SequenceGuard("order-status", SqlSequenceStore(db), on_stale="park")

    @bus.subscribe(OrderEvent, group="order-service")
    @guard(entity=lambda e: e.order_id, sequence=lambda e: e.version)
    async def apply(event: OrderEvent, ctx: Context) -> None: ...

The check, the handler and the new high-water mark run in one unit of work (one
database transaction on SQL stores, with the entity's row locked on PostgreSQL),
so two consumers of one entity cannot both pass the check.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from eventbus.context import Context
from eventbus.patterns.sql import Database, Transaction

logger = logging.getLogger("eventbus.saga")

E = TypeVar("E")
GuardedHandler = Callable[[E, Context], Awaitable[None]]
StalePolicy = Literal["ignore", "park"]


@dataclass(frozen=True)
class ParkedEvent:
    """A stale event kept aside: which entity, its sequence, what had been applied."""

    scope: str
    entity_id: str
    sequence: int
    applied: int
    event_type: str
    event_id: str
    data: str


class SequenceSession(Protocol):
    """The guard's statements inside one unit of work."""

    tx: Transaction | None

    async def last(self, scope: str, entity_id: str) -> int | None:
        """The highest sequence applied for the entity (locked until the end), or ``None``."""

    async def advance(self, scope: str, entity_id: str, sequence: int) -> None:
        """Record ``sequence`` as the entity's highest applied."""

    async def park(self, event: ParkedEvent) -> None:
        """Keep a stale event aside."""


class SequenceStore(Protocol):
    """Where the guard keeps each entity's high-water mark and parked events."""

    async def setup(self) -> None:
        """Create what the store needs, idempotently."""

    def unit_of_work(self) -> AbstractAsyncContextManager[SequenceSession]:
        """One atomic check-handle-advance."""

    def join(self, tx: Transaction) -> SequenceSession:
        """A session inside a transaction someone else opened (and commits)."""

    async def parked(self, scope: str) -> list[ParkedEvent]:
        """The stale events parked for ``scope``, oldest first."""


class _MemorySession:
    tx: Transaction | None = None

    def __init__(self, store: MemorySequenceStore) -> None:
        self._store = store

    async def last(self, scope: str, entity_id: str) -> int | None:
        return self._store.marks.get((scope, entity_id))

    async def advance(self, scope: str, entity_id: str, sequence: int) -> None:
        self._store.marks[(scope, entity_id)] = sequence

    async def park(self, event: ParkedEvent) -> None:
        self._store.parked_events.append(event)


class MemorySequenceStore:
    """High-water marks in this process (tests, demos)."""

    def __init__(self) -> None:
        self.marks: dict[tuple[str, str], int] = {}
        self.parked_events: list[ParkedEvent] = []
        self._lock = asyncio.Lock()

    async def setup(self) -> None:
        """Nothing to create."""

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[SequenceSession]:
        """Serialised: one check-handle-advance at a time."""
        async with self._lock:
            yield _MemorySession(self)

    def join(self, tx: Transaction) -> SequenceSession:
        """Memory has no transaction to join: a plain session."""
        return _MemorySession(self)

    async def parked(self, scope: str) -> list[ParkedEvent]:
        """Parked events of ``scope``."""
        return [p for p in self.parked_events if p.scope == scope]


class _SqlSession:
    def __init__(self, tx: Transaction, table: str) -> None:
        self.tx: Transaction | None = tx
        self._tx = tx
        self._table = table

    async def last(self, scope: str, entity_id: str) -> int | None:
        # Create the row first so there is always one to lock (PostgreSQL FOR UPDATE).
        await self._tx.execute(
            f"INSERT INTO {self._table} (scope, entity_id, applied) VALUES ($1, $2, NULL) "
            "ON CONFLICT (scope, entity_id) DO NOTHING", scope, entity_id)
        lock = " FOR UPDATE" if self._tx.dialect == "postgres" else ""
        value = await self._tx.fetchval(
            f"SELECT applied FROM {self._table} WHERE scope = $1 AND entity_id = $2{lock}",
            scope, entity_id)
        return None if value is None else int(value)

    async def advance(self, scope: str, entity_id: str, sequence: int) -> None:
        await self._tx.execute(f"UPDATE {self._table} SET applied = $3 WHERE scope = $1 "
                               "AND entity_id = $2", scope, entity_id, sequence)

    async def park(self, event: ParkedEvent) -> None:
        await self._tx.execute(
            f"INSERT INTO {self._table}_parked (scope, entity_id, sequence, applied, event_type, "
            "event_id, data, parked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            event.scope, event.entity_id, event.sequence, event.applied, event.event_type,
            event.event_id, event.data, time.time())


class SqlSequenceStore:
    """High-water marks and parked events in ``db`` (SQLite or PostgreSQL).

    ``unit_of_work`` defaults to ``db.transaction``; pass an outbox's or an inbox's
    so the handler's own writes and publishes share the guard's transaction.
    """

    def __init__(self, db: Database, *, table: str = "eventbus_sequences",
                 unit_of_work: Callable[[], AbstractAsyncContextManager[Transaction]] | None = None
                 ) -> None:
        self.db = db
        self.table = table
        self._unit_of_work = unit_of_work or db.transaction

    async def setup(self) -> None:
        """Create the two tables if they are missing."""
        real = "DOUBLE PRECISION" if self.db.dialect == "postgres" else "REAL"
        async with self.db.transaction() as tx:
            await tx.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (scope TEXT NOT NULL, "
                             "entity_id TEXT NOT NULL, applied BIGINT, "
                             "PRIMARY KEY (scope, entity_id))")
            await tx.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table}_parked (scope TEXT NOT NULL, "
                "entity_id TEXT NOT NULL, sequence BIGINT NOT NULL, applied BIGINT NOT NULL, "
                f"event_type TEXT NOT NULL, event_id TEXT NOT NULL, data TEXT NOT NULL, "
                f"parked_at {real} NOT NULL)")

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[SequenceSession]:
        """One database transaction."""
        async with self._unit_of_work() as tx:
            yield _SqlSession(tx, self.table)

    def join(self, tx: Transaction) -> SequenceSession:
        """A session in ``tx`` (a transaction of the same database)."""
        return _SqlSession(tx, self.table)

    async def parked(self, scope: str) -> list[ParkedEvent]:
        """Parked events of ``scope``, oldest first."""
        async with self.db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT scope, entity_id, sequence, applied, event_type, event_id, data FROM "
                f"{self.table}_parked WHERE scope = $1 ORDER BY parked_at, sequence", scope)
        return [ParkedEvent(r[0], r[1], int(r[2]), int(r[3]), r[4], r[5], r[6]) for r in rows]


class SequenceGuard:
    """Applies an entity's events only when newer than what was applied (see module doc).

    ``scope`` names what is guarded (one projection or saga); ``on_stale`` is
    ``"ignore"`` (log at info, count in :attr:`ignored`) or ``"park"`` (also keep
    the event in the store, listed by :meth:`parked`).
    """

    def __init__(self, scope: str, store: SequenceStore | None = None, *,
                 on_stale: StalePolicy = "ignore") -> None:
        self.scope = scope
        self.store: SequenceStore = store or MemorySequenceStore()
        self.on_stale = on_stale
        self.ignored = 0

    def __call__(self, *, entity: Callable[[Any], str], sequence: Callable[[Any], int]
                 ) -> Callable[[GuardedHandler[E]], GuardedHandler[E]]:
        """Decorate an ``(event, ctx)`` handler: it runs only for events newer than the
        entity's last applied ``sequence``."""
        def decorate(fn: GuardedHandler[E]) -> GuardedHandler[E]:
            @functools.wraps(fn)
            async def guarded(event: E, ctx: Context) -> None:
                await self.apply(entity(event), sequence(event), lambda: fn(event, ctx),
                                 event=event, ctx=ctx)
            return guarded
        return decorate

    async def apply(self, entity_id: str, sequence: int, handler: Callable[[], Awaitable[None]],
                    *, event: Any = None, ctx: Context | None = None,
                    tx: Transaction | None = None) -> bool:
        """Run ``handler`` if ``sequence`` is newer than the entity's; returns whether it ran.

        With ``tx`` the check joins that transaction (the caller commits it), so the
        handler's writes and the new mark commit together.
        """
        if tx is not None:
            return await self._apply(self.store.join(tx), entity_id, sequence, handler,
                                     event, ctx)
        async with self.store.unit_of_work() as session:
            return await self._apply(session, entity_id, sequence, handler, event, ctx)

    async def _apply(self, session: SequenceSession, entity_id: str, sequence: int,
                     handler: Callable[[], Awaitable[None]], event: Any,
                     ctx: Context | None) -> bool:
        last = await session.last(self.scope, entity_id)
        if last is not None and sequence <= last:
            self.ignored += 1
            event_type = ctx.envelope.type if ctx is not None else type(event).__name__
            logger.info("%s: stale %s for %s (sequence %d, already at %d) %s", self.scope,
                        event_type, entity_id, sequence, last,
                        "parked" if self.on_stale == "park" else "ignored")
            if self.on_stale == "park":
                data = event.model_dump_json() if hasattr(event, "model_dump_json") else ""
                await session.park(ParkedEvent(
                    self.scope, entity_id, sequence, last, event_type,
                    ctx.envelope.id if ctx is not None else "", data))
            return False
        await handler()
        await session.advance(self.scope, entity_id, sequence)
        return True

    async def parked(self) -> list[ParkedEvent]:
        """The stale events this guard parked."""
        return await self.store.parked(self.scope)
