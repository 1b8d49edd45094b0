"""Projections: read models kept up to date from events, exactly once per event.

A projection writes its read model and its checkpoint **in the same database
transaction**, so a crash anywhere in between leaves both as they were: the event
is applied again on restart, once. Two feeds:

- **the event store** (:meth:`Projection.catch_up`, :meth:`Projection.start`):
  ``read_all`` from the checkpoint (a global position); an event at or below the
  checkpoint is skipped. :meth:`Projection.rebuild` clears the read model and
  replays from zero. ``await projection.wait_until(position)`` returns once the read
  model includes that position: a caller reads its own write.
- **the bus** (:meth:`Projection.subscribe`): each event id is recorded, in the same
  transaction, in a ``seen`` table; a redelivered event is skipped.
  ``await projection.wait_for_event(envelope.id)`` is its read-your-write.

::

    class OrderTotals(Projection):
        async def create_tables(self, tx: Transaction) -> None:
            await tx.execute("CREATE TABLE IF NOT EXISTS totals (id TEXT PRIMARY KEY, n INT)")

        async def clear(self, tx: Transaction) -> None:
            await tx.execute("DELETE FROM totals")

        async def apply(self, event: Message, tx: Transaction) -> None:
            if isinstance(event, ItemAdded):
                await tx.execute("UPDATE totals SET n = n + 1 WHERE id = $1", event.order_id)

    totals = OrderTotals(db, name="order-totals")
    await totals.setup()
    await totals.catch_up(store)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from eventbus.backoff import Backoff
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError
from eventbus.events import Message, Registry, registry
from eventbus.patterns.sql import Database, Transaction, UniqueViolation

if TYPE_CHECKING:
    from eventbus.bus import EventBus
    from eventbus.patterns.eventsourcing.store import EventStore, StoredEvent

__all__ = ["Projection", "ProjectionHealth"]

log = logging.getLogger("eventbus.patterns.cqrs")
_BACKOFF = Backoff(initial=0.2, max_delay=10.0)
CHECKPOINTS = "eventbus_projections"
SEEN = "eventbus_projection_seen"


@dataclass(frozen=True, slots=True)
class ProjectionHealth:
    """What :meth:`Projection.health` reports: ``ok`` unless following the store
    failed last time (``last_error``) or the follow task ended."""

    ok: bool
    running: bool
    position: int
    last_error: str = ""


class Projection:
    """Base of read models; subclass it and implement :meth:`apply` (plus
    :meth:`create_tables` and :meth:`clear` for its tables).

    ``handles``: event classes the projection reads (empty: every type). Others are
    skipped without decoding, and still move the checkpoint past them.
    """

    handles: ClassVar[tuple[type[Message], ...]] = ()

    def __init__(self, db: Database, *, name: str, registry: Registry = registry,
                 batch: int = 200, poll_interval: float = 0.5) -> None:
        if not name:
            raise ConfigurationError("a projection needs a name: it keys its checkpoint")
        self.db = db
        self.name = name
        self.registry = registry
        self.batch = batch
        self.poll_interval = poll_interval
        self._types = {cls.event_type() for cls in self.handles}
        self._moved = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._error = ""
        self._position = 0

    # -- what a subclass writes --------------------------------------------------------

    async def create_tables(self, tx: Transaction) -> None:
        """Create the read model's tables if missing (called by :meth:`setup`)."""

    async def clear(self, tx: Transaction) -> None:
        """Empty the read model (called by :meth:`rebuild`, in its transaction)."""

    async def apply(self, event: Message, tx: Transaction) -> None:
        """Update the read model for ``event`` inside ``tx`` (the checkpoint's
        transaction: write only through ``tx``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement apply(event, tx)")

    # -- set up and position ---------------------------------------------------------

    async def setup(self) -> None:
        """Create the checkpoint tables and the read model's (safe to call again)."""
        async with self.db.transaction() as tx:
            await tx.execute(f"CREATE TABLE IF NOT EXISTS {CHECKPOINTS} ("
                             "name TEXT PRIMARY KEY, position BIGINT NOT NULL)")
            await tx.execute(f"CREATE TABLE IF NOT EXISTS {SEEN} (name TEXT NOT NULL, "
                             "event_id TEXT NOT NULL, PRIMARY KEY (name, event_id))")
            await tx.execute(f"INSERT INTO {CHECKPOINTS} (name, position) VALUES ($1, 0) "
                             "ON CONFLICT (name) DO NOTHING", self.name)
            await self.create_tables(tx)

    async def position(self) -> int:
        """The store position the read model includes (0: nothing yet)."""
        async with self.db.transaction() as tx:
            value = await tx.fetchval(
                f"SELECT position FROM {CHECKPOINTS} WHERE name = $1", self.name)
        self._position = int(value or 0)
        return self._position

    async def _lock_checkpoint(self, tx: Transaction) -> int:
        # FOR UPDATE: two projectors of one name (two processes) take turns on
        # PostgreSQL; SQLite's BEGIN IMMEDIATE already admits one writer.
        lock = " FOR UPDATE" if tx.dialect == "postgres" else ""
        value = await tx.fetchval(
            f"SELECT position FROM {CHECKPOINTS} WHERE name = $1{lock}", self.name)
        if value is None:
            raise ConfigurationError(
                f"projection {self.name!r} has no checkpoint row: call setup() first")
        return int(value)

    # -- fed from the event store ----------------------------------------------------

    async def catch_up(self, store: EventStore) -> int:
        """Apply every stored event after the checkpoint, a batch per transaction
        (read model and checkpoint together); returns how many were applied."""
        applied, after = 0, await self.position()
        while True:
            # The checkpoint is read once: each page re-reads it under lock anyway
            # (so events another projector applied meanwhile are skipped).
            page = await store.read_all(after, self.batch)
            if not page:
                return applied
            applied += await self._apply_page(page)
            after = page[-1].position
            if len(page) < self.batch:
                return applied

    async def _apply_page(self, page: list[StoredEvent]) -> int:
        applied = 0
        async with self.db.transaction() as tx:
            checkpoint = await self._lock_checkpoint(tx)
            for stored in page:
                if stored.position <= checkpoint:
                    continue  # applied already (by another projector or before a crash)
                if not self._types or stored.envelope.type in self._types:
                    await self.apply(stored.decode(self.registry), tx)
                    applied += 1
            last = page[-1].position
            if last > checkpoint:
                await tx.execute(f"UPDATE {CHECKPOINTS} SET position = $2 WHERE name = $1",
                                 self.name, last)
        self._position = max(self._position, last)
        self._moved.set()
        return applied

    async def rebuild(self, store: EventStore) -> int:
        """Clear the read model and replay the whole store into it. The clearing and
        the checkpoint's reset commit together; readers see the model refill."""
        async with self.db.transaction() as tx:
            await self._lock_checkpoint(tx)
            await self.clear(tx)
            await tx.execute(f"UPDATE {CHECKPOINTS} SET position = 0 WHERE name = $1",
                             self.name)
            await tx.execute(f"DELETE FROM {SEEN} WHERE name = $1", self.name)
        self._position = 0
        return await self.catch_up(store)

    async def wait_until(self, position: int, timeout: float = 10.0) -> None:
        """Return once the read model includes store ``position`` (e.g. the last
        ``StoredEvent.position`` a save returned); ``TimeoutError`` after ``timeout``.
        Sees other processes' progress too (it re-reads the checkpoint)."""
        self._wake.set()
        async with asyncio.timeout(timeout):
            while await self.position() < position:
                await self._wait_moved()

    async def _wait_moved(self) -> None:
        self._moved.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._moved.wait(), self.poll_interval)

    async def start(self, store: EventStore) -> None:
        """Follow the store in the background: catch up, then poll every
        ``poll_interval`` seconds (at once when :meth:`wait_until` is waiting)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._follow(store),
                                             name=f"projection-{self.name}")

    async def _follow(self, store: EventStore) -> None:
        failures = 0
        while True:
            try:
                await self.catch_up(store)
                self._error, failures = "", 0
            except Exception as exc:
                # Visible (log, health) and retried from the checkpoint: nothing was
                # half-applied, the transaction rolled back.
                failures += 1
                self._error = f"{type(exc).__name__}: {exc}"
                log.error("projection %s failed at position %d (%s); retrying",
                          self.name, self._position, self._error)
                await asyncio.sleep(_BACKOFF.delay(failures))
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def stop(self) -> None:
        """Stop following the store."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def health(self) -> ProjectionHealth:
        """Whether the follow task runs, its position and its last error."""
        running = self._task is not None and not self._task.done()
        return ProjectionHealth(running and not self._error, running, self._position,
                                self._error)

    # -- fed from the bus ------------------------------------------------------------

    async def handle(self, envelope: Envelope) -> bool:
        """Apply one event received from the bus, once per event id (the id is
        recorded in the read model's transaction); returns ``False`` for a duplicate."""
        if self._types and envelope.type not in self._types:
            return False
        async with self.db.transaction() as tx:
            if await tx.fetchval(f"SELECT 1 FROM {SEEN} WHERE name = $1 AND event_id = $2",
                                 self.name, envelope.id):
                return False
        try:
            async with self.db.transaction() as tx:
                await self.apply(self.registry.decode(envelope), tx)
                # After the write: a concurrent twin that got here first makes this
                # insert fail, and the whole transaction (the write too) rolls back.
                await tx.execute(f"INSERT INTO {SEEN} (name, event_id) VALUES ($1, $2)",
                                 self.name, envelope.id)
        except UniqueViolation:
            return False
        self._moved.set()
        return True

    def subscribe(self, bus: EventBus, *classes: type[Message], group: str | None = None,
                  **options: Any) -> None:
        """Feed the projection from ``bus``: its handler for ``classes`` (default
        :attr:`handles`) in ``group`` (default ``projection-<name>``)."""
        targets = classes or self.handles
        if not targets:
            raise ConfigurationError(
                f"projection {self.name!r}: name the event classes to subscribe to "
                "(subscribe(bus, OrderPlaced, ...) or the class attribute handles)")

        async def project(envelope: Envelope) -> None:
            await self.handle(envelope)

        project.__qualname__ = f"{type(self).__name__}.handle"
        bus.subscribe(*targets, group=group or f"projection-{self.name}", **options)(project)

    async def wait_for_event(self, event_id: str, timeout: float = 10.0) -> None:
        """Return once the bus-fed event ``event_id`` is in the read model."""
        async with asyncio.timeout(timeout):
            while True:
                async with self.db.transaction() as tx:
                    if await tx.fetchval(
                            f"SELECT 1 FROM {SEEN} WHERE name = $1 AND event_id = $2",
                            self.name, event_id):
                        return
                await self._wait_moved()
