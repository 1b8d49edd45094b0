"""Where a :class:`~eventbus.patterns.ordering.Resequencer` keeps, per entity, the
highest sequence applied, and the stale events it was told to keep: in this
process (:class:`MemorySequenceStore`) or in a database (:class:`SQLSequenceStore`,
SQLite or PostgreSQL), where the check, the handler's writes and the new mark
commit in one transaction (the entity's row locked on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from eventbus._deprecation import Renamed, renamed
from eventbus.patterns.schema import KINDS, ready
from eventbus.patterns.sql import Database, Transaction, real_type


@dataclass(frozen=True)
class StaleEvent:
    """A stale event kept aside (``on_stale="keep"``): which entity, its sequence, and
    what had been applied when it came."""

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

    async def keep(self, event: StaleEvent) -> None:
        """Keep a stale event aside."""


class SequenceStore(Protocol):
    """Where the guard keeps each entity's high-water mark and kept stale events."""

    async def setup(self) -> None:
        """Create what the store needs, idempotently."""

    def unit_of_work(self) -> AbstractAsyncContextManager[SequenceSession]:
        """One atomic check-handle-advance."""

    def join(self, tx: Transaction) -> SequenceSession:
        """A session inside a transaction someone else opened (and commits)."""

    async def stale(self, scope: str) -> list[StaleEvent]:
        """The stale events kept for ``scope``, oldest first."""


class _MemorySession:
    tx: Transaction | None = None

    def __init__(self, store: MemorySequenceStore) -> None:
        self._store = store

    async def last(self, scope: str, entity_id: str) -> int | None:
        return self._store.marks.get((scope, entity_id))

    async def advance(self, scope: str, entity_id: str, sequence: int) -> None:
        self._store.marks[(scope, entity_id)] = sequence

    async def keep(self, event: StaleEvent) -> None:
        self._store.stale_events.append(event)


class MemorySequenceStore:
    """High-water marks in this process: lost when it ends, so seed them at start
    (:meth:`Resequencer.seed`) from what the handler's own state says was applied."""

    def __init__(self) -> None:
        self.marks: dict[tuple[str, str], int] = {}
        self.stale_events: list[StaleEvent] = []
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

    async def stale(self, scope: str) -> list[StaleEvent]:
        """Kept stale events of ``scope``."""
        return [p for p in self.stale_events if p.scope == scope]


class _SqlSession:
    def __init__(self, tx: Transaction, table: str) -> None:
        self.tx: Transaction | None = tx
        self._tx = tx
        self._table = table

    async def last(self, scope: str, entity_id: str) -> int | None:
        # Create the row first so there is always one to lock (PostgreSQL FOR UPDATE).
        await self._tx.execute(
            f"INSERT INTO {self._table} (scope, entity_id, applied) VALUES ($1, $2, NULL) "
            "ON CONFLICT (scope, entity_id) DO NOTHING",
            scope,
            entity_id,
        )
        lock = " FOR UPDATE" if self._tx.dialect == "postgres" else ""
        value = await self._tx.fetchval(
            f"SELECT applied FROM {self._table} WHERE scope = $1 AND entity_id = $2{lock}",
            scope,
            entity_id,
        )
        return None if value is None else int(value)

    async def advance(self, scope: str, entity_id: str, sequence: int) -> None:
        await self._tx.execute(
            f"UPDATE {self._table} SET applied = $3 WHERE scope = $1 AND entity_id = $2",
            scope,
            entity_id,
            sequence,
        )

    async def keep(self, event: StaleEvent) -> None:
        await self._tx.execute(
            f"INSERT INTO {self._table}_parked (scope, entity_id, sequence, applied, event_type, "
            "event_id, data, parked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            event.scope,
            event.entity_id,
            event.sequence,
            event.applied,
            event.event_type,
            event.event_id,
            event.data,
            time.time(),
        )


class SQLSequenceStore:
    """High-water marks and kept stale events in ``db`` (SQLite or PostgreSQL).

    ``unit_of_work`` defaults to ``db.transaction``; pass an outbox's or an inbox's
    so the handler's own writes and publishes share the guard's transaction.
    """

    def __init__(
        self,
        db: Database,
        *,
        table: str = "eventbus_sequences",
        unit_of_work: Callable[[], AbstractAsyncContextManager[Transaction]] | None = None,
    ) -> None:
        self.db = db
        self.table = table
        self._unit_of_work = unit_of_work or db.transaction

    async def setup(self) -> None:
        """Create the two tables if they are missing (the kept stale events' table is
        still named ``<table>_parked``, as in the release that called them parked);
        refuse tables of another schema version
        (:class:`~eventbus.patterns.schema.SchemaVersionError`: run ``eventbus db migrate``)."""
        real = real_type(self.db.dialect)
        async with self.db.transaction() as tx:
            await ready(tx, KINDS["sequence store"], self.table, self.db.url)
            await tx.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} (scope TEXT NOT NULL, "
                "entity_id TEXT NOT NULL, applied BIGINT, "
                "PRIMARY KEY (scope, entity_id))"
            )
            await tx.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table}_parked (scope TEXT NOT NULL, "
                "entity_id TEXT NOT NULL, sequence BIGINT NOT NULL, applied BIGINT NOT NULL, "
                f"event_type TEXT NOT NULL, event_id TEXT NOT NULL, data TEXT NOT NULL, "
                f"parked_at {real} NOT NULL)"
            )

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[SequenceSession]:
        """One database transaction."""
        async with self._unit_of_work() as tx:
            yield _SqlSession(tx, self.table)

    def join(self, tx: Transaction) -> SequenceSession:
        """A session in ``tx`` (a transaction of the same database)."""
        return _SqlSession(tx, self.table)

    async def stale(self, scope: str) -> list[StaleEvent]:
        """Kept stale events of ``scope``, oldest first."""
        async with self.db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT scope, entity_id, sequence, applied, event_type, event_id, data FROM "
                f"{self.table}_parked WHERE scope = $1 ORDER BY parked_at, sequence",
                scope,
            )
        return [StaleEvent(r[0], r[1], int(r[2]), int(r[3]), r[4], r[5], r[6]) for r in rows]


# Renamed for one vocabulary (exceptions end in Error, SQL in capitals); the old
# spelling warns for one release.
_RENAMED: Renamed = {
    "SqlSequenceStore": ("eventbus.patterns.ordering.SQLSequenceStore", lambda: SQLSequenceStore)
}


def __getattr__(name: str) -> Any:
    return renamed(__name__, name, _RENAMED)
