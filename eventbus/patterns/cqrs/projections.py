"""Projections: read models kept up to date from events, exactly once per event.

(Over 400 lines on purpose: one projector whose checkpoint, fencing and rebuild rules
are read together.)

A projection writes its read model and its checkpoint **in the same database
transaction**, so a crash anywhere in between leaves both as they were: the event
is applied again on restart, once. Two feeds:

- **the event store** (:meth:`Projection.catch_up`, :meth:`Projection.start`):
  ``read_all`` from the checkpoint (a global position). A page read from position
  ``p`` applies only if the checkpoint is still ``p`` and its *generation* has not
  changed (compare-and-set, under the checkpoint's lock): a page another
  projector applied meanwhile, or one read before a rebuild, is read again from
  where the checkpoint is. :meth:`Projection.rebuild` clears the read model,
  resets the checkpoint and bumps its generation in one transaction, which fences
  every projector still holding a page read before it. An event whose ``apply()``
  keeps failing (or that cannot be decoded) is parked after ``park_after``
  attempts, holding its stream (see :mod:`eventbus.patterns.eventsourcing.parking`).
  ``await projection.wait_until(position)`` returns once the read model includes
  that position: a caller reads its own write.
- **the bus** (:meth:`Projection.subscribe`): each event id is recorded, in the same
  transaction and before ``apply()``, in a ``seen`` table; a redelivered event is
  skipped, and an ``apply()`` that fails (a unique constraint of the read model
  too) fails the handler, retried and then dead-lettered by the bus.
  ``await projection.wait_for_event(envelope.id)`` is its read-your-write;
  :meth:`Projection.cleanup` prunes the ``seen`` table by age.

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
from typing import TYPE_CHECKING, ClassVar

from eventbus.backoff import Backoff
from eventbus.errors import ConfigurationError, InfrastructureError, PoisonMessageError
from eventbus.events import Message, Registry, registry
from eventbus.patterns.cqrs import _parked
from eventbus.patterns.cqrs._bus_feed import SEEN, BusFeed
from eventbus.patterns.eventsourcing.parking import ParkedStoredEvent
from eventbus.patterns.schema import KINDS, ready
from eventbus.patterns.sql import Database, Transaction, real_type
from eventbus.tasks import stop_task

if TYPE_CHECKING:
    from eventbus.patterns.eventsourcing.store import EventStore, StoredEvent

__all__ = ["Projection", "ProjectionHealth"]

log = logging.getLogger("eventbus.patterns.cqrs")
_BACKOFF = Backoff(initial=0.2, max_delay=10.0)
CHECKPOINTS = "eventbus_projections"


@dataclass(frozen=True, slots=True)
class ProjectionHealth:
    """What :meth:`Projection.health` reports: ``ok`` unless following the store
    failed last time (``last_error``) or the follow task ended; ``parked``: events
    set aside for an operator (the projection goes on without them)."""

    ok: bool
    running: bool
    position: int
    last_error: str = ""
    parked: int = 0


class _EventFailedError(Exception):
    """Carries which stored event failed out of the page's transaction."""

    def __init__(self, stored: StoredEvent) -> None:
        super().__init__(stored.position)
        self.stored = stored


class Projection(BusFeed):
    """Base of read models; subclass it and implement :meth:`apply` (plus
    :meth:`create_tables` and :meth:`clear` for its tables).

    ``handles``: event classes the projection reads (empty: every type). Others are
    skipped without decoding, and still move the checkpoint past them.
    ``park_after``: failed attempts at one stored event before it is parked (an
    event that cannot be decoded is parked at once; an ``InfrastructureError``,
    the database being away, never parks anything).
    """

    handles: ClassVar[tuple[type[Message], ...]] = ()

    def __init__(
        self,
        db: Database,
        *,
        name: str,
        registry: Registry = registry,
        batch: int = 200,
        poll_interval: float = 0.5,
        park_after: int = 3,
    ) -> None:
        if not name:
            raise ConfigurationError("a projection needs a name: it keys its checkpoint")
        if park_after < 1:
            raise ConfigurationError(f"park_after must be >= 1, not {park_after}")
        self.db = db
        self.name = name
        self.registry = registry
        self.batch = batch
        self.poll_interval = poll_interval
        self.park_after = park_after
        self._types = {cls.event_type() for cls in self.handles}
        self._moved = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._error = ""
        self._position = 0
        self._parked = 0
        self._attempts: dict[int, int] = {}  # position -> failed attempts (this process)

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
        """Create the checkpoint, seen and parked tables and the read model's (safe
        to call again); refuse the first three at another schema version
        (:class:`~eventbus.patterns.schema.SchemaVersionError`: run ``eventbus db migrate``)."""
        real = real_type(self.db.dialect)
        async with self.db.transaction() as tx:
            await ready(tx, KINDS["projections"], CHECKPOINTS, self.db.url)
            await tx.execute(
                f"CREATE TABLE IF NOT EXISTS {CHECKPOINTS} (name TEXT PRIMARY KEY, "
                "position BIGINT NOT NULL, generation BIGINT NOT NULL DEFAULT 0)"
            )
            await tx.execute(
                f"CREATE TABLE IF NOT EXISTS {SEEN} (name TEXT NOT NULL, "
                f"event_id TEXT NOT NULL, seen_at {real} NOT NULL, "
                "PRIMARY KEY (name, event_id))"
            )
            await _parked.create_table(tx)
            await tx.execute(
                f"INSERT INTO {CHECKPOINTS} (name, position) VALUES ($1, 0) "
                "ON CONFLICT (name) DO NOTHING",
                self.name,
            )
            await self.create_tables(tx)

    def wants(self, event_type: str) -> bool:
        """Whether events of ``event_type`` reach :meth:`apply` (see ``handles``)."""
        return not self._types or event_type in self._types

    async def position(self) -> int:
        """The store position the read model includes (0: nothing yet)."""
        return (await self._checkpoint())[0]

    async def _checkpoint(self) -> tuple[int, int]:
        """The checkpoint's position and generation (and the parked count, for health)."""
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                f"SELECT position, generation, (SELECT count(*) FROM {_parked.PARKED} "
                f"WHERE name = $1) FROM {CHECKPOINTS} WHERE name = $1",
                self.name,
            )
        if row is None:
            raise ConfigurationError(
                f"projection {self.name!r} has no checkpoint row: call setup() first"
            )
        self._position, self._parked = int(row[0]), int(row[2])
        return self._position, int(row[1])

    async def _lock_checkpoint(self, tx: Transaction) -> tuple[int, int]:
        # FOR UPDATE: two projectors of one name (two processes) take turns on
        # PostgreSQL; SQLite's BEGIN IMMEDIATE already admits one writer.
        lock = " FOR UPDATE" if tx.dialect == "postgres" else ""
        row = await tx.fetchrow(
            f"SELECT position, generation FROM {CHECKPOINTS} WHERE name = $1{lock}", self.name
        )
        if row is None:
            raise ConfigurationError(
                f"projection {self.name!r} has no checkpoint row: call setup() first"
            )
        return int(row[0]), int(row[1])

    # -- fed from the event store ----------------------------------------------------

    async def catch_up(self, store: EventStore) -> int:
        """Apply every stored event after the checkpoint, a batch per transaction
        (read model and checkpoint together); returns how many were applied.

        Raises what ``apply()`` raised for an event that failed fewer than
        ``park_after`` times so far; the next call tries it again (and parks it
        when it fails ``park_after`` times).
        """
        applied = 0
        after, generation = await self._checkpoint()
        while True:
            page = await store.read_all(after, self.batch)
            if not page:
                return applied
            outcome = await self._apply_or_park(page, after, generation)
            if outcome is None:  # the checkpoint moved (another projector, a rebuild)
                after, generation = await self._checkpoint()
                continue
            count, after = outcome
            applied += count
            if after == page[-1].position and len(page) < self.batch:
                return applied

    async def _apply_or_park(
        self, page: list[StoredEvent], after: int, generation: int
    ) -> tuple[int, int] | None:
        try:
            return await self._apply_page(page, after, generation)
        except _EventFailedError as failed:
            error = failed.__cause__
            assert isinstance(error, Exception)
            stored = failed.stored
            if isinstance(error, InfrastructureError):
                raise error from None
            attempts = self._attempts[stored.position] = self._attempts.get(stored.position, 0) + 1
            if attempts < self.park_after and not isinstance(error, PoisonMessageError):
                raise error from None
        # It failed for good: apply what precedes it, park it, move past it.
        reason = f"{type(error).__name__}: {error}"
        upto = [s for s in page if s.position <= stored.position]
        outcome = await self._apply_page(upto, after, generation, park=(stored.position, reason))
        self._attempts.pop(stored.position, None)
        if outcome is not None:
            log.error(
                "projection %s: event %s (position %d, stream %r) failed %d time(s) "
                "(%s); it is parked and its stream waits behind it: fix the cause and "
                "call retry_parked(%d), or skip_parked(%d)",
                self.name,
                stored.id,
                stored.position,
                stored.stream_id,
                attempts,
                reason,
                stored.position,
                stored.position,
            )
        return outcome

    async def _apply_page(
        self,
        page: list[StoredEvent],
        after: int,
        generation: int,
        park: tuple[int, str] | None = None,
    ) -> tuple[int, int] | None:
        """Apply ``page`` (read from position ``after`` at ``generation``) with the
        checkpoint; ``None`` when the checkpoint is not where the page starts."""
        applied = 0
        async with self.db.transaction() as tx:
            if await self._lock_checkpoint(tx) != (after, generation):
                return None  # compare-and-set failed: nothing written
            held = await _parked.held_streams(tx, self.name)
            for stored in page:
                if not self.wants(stored.envelope.type):
                    continue
                if park is not None and stored.position == park[0]:
                    await _parked.park(tx, self.name, stored, park[1])
                    held.setdefault(stored.stream_id, stored.position)
                elif stored.stream_id in held:
                    await _parked.park(tx, self.name, stored, "", held[stored.stream_id])
                else:
                    try:
                        await self.apply(stored.decode(self.registry), tx)
                    except Exception as exc:
                        raise _EventFailedError(stored) from exc
                    applied += 1
            last = page[-1].position
            await tx.execute(
                f"UPDATE {CHECKPOINTS} SET position = $2 WHERE name = $1", self.name, last
            )
        self._position = max(self._position, last)
        self._moved.set()
        return applied, last

    async def rebuild(self, store: EventStore) -> int:
        """Clear the read model and replay the whole store into it. The clearing, the
        checkpoint's reset and a new generation commit together: a projector of the
        same name (another process) holding a page read before cannot apply it
        any more, it reads again from zero. Parked events and seen ids are
        forgotten (the replay meets those events again)."""
        async with self.db.transaction() as tx:
            await self._lock_checkpoint(tx)
            await self.clear(tx)
            await tx.execute(
                f"UPDATE {CHECKPOINTS} SET position = 0, generation = generation "
                "+ 1 WHERE name = $1",
                self.name,
            )
            await tx.execute(f"DELETE FROM {SEEN} WHERE name = $1", self.name)
            await tx.execute(f"DELETE FROM {_parked.PARKED} WHERE name = $1", self.name)
        self._position = 0
        self._attempts.clear()
        return await self.catch_up(store)

    # -- parked events -----------------------------------------------------------------

    async def parked(self) -> list[ParkedStoredEvent]:
        """The events this projection parked, in position order."""
        async with self.db.transaction() as tx:
            found = await _parked.parked(tx, self.name)
        self._parked = len(found)
        return found

    async def retry_parked(self, position: int) -> int:
        """Apply the parked event at ``position`` (the earliest parked event of its
        stream), then the events held behind it, in order; returns how many were
        applied. Raises what ``apply()`` raises when that event fails again (it
        stays parked, with that error)."""
        try:
            return await _parked.release(self, position, apply_head=True)
        finally:
            await self._checkpoint()

    async def skip_parked(self, position: int) -> int:
        """Give up on the parked event at ``position`` (never applied) and apply the
        events held behind it, in order; returns how many were applied."""
        try:
            return await _parked.release(self, position, apply_head=False)
        finally:
            await self._checkpoint()

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
            self._task = asyncio.create_task(self._follow(store), name=f"projection-{self.name}")

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
                log.error(
                    "projection %s failed at position %d (%s); retrying",
                    self.name,
                    self._position,
                    self._error,
                )
                await asyncio.sleep(_BACKOFF.delay(failures))
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop following the store; waits at most ``timeout`` seconds for the task
        (a batch cut short rolls back and is applied again later)."""
        task, self._task = self._task, None
        await stop_task(task, timeout=timeout, what=f"projection {self.name}", log=log)

    def health(self) -> ProjectionHealth:
        """Whether the follow task runs, its position, its last error and how many
        events it parked."""
        running = self._task is not None and not self._task.done()
        return ProjectionHealth(
            running and not self._error, running, self._position, self._error, self._parked
        )
