"""The event store on SQLite or PostgreSQL, through :mod:`eventbus.patterns.sql`.

(Over 400 lines on purpose: one store class whose SQL and its concurrency rules are read together.)

Optimistic concurrency is the database's: ``UNIQUE (stream_id, version)`` lets
only one of two appends at the same expected version insert its rows. Rows go
in with ``ON CONFLICT DO NOTHING`` and the store compares the rows inserted with
the rows given, so a conflict is reported as :class:`ConcurrencyError` inside the
transaction (which then rolls back), whichever database it is. ``UNIQUE
(event_id)`` keeps a retried append from storing an event twice.

Gap safety (why ``read_all`` never skips a late commit): a reader following
``position > after`` is only safe if no event can become visible *after* an event
with a higher position was read. With a plain sequence that happens: writer A
takes position 5, writer B takes 6 and commits, a reader reads 6 and moves on,
then A commits 5, which the reader never sees. Here positions are allocated
*inside* a serialised section of the appending transaction, so commit order is
position order:

* SQLite: a write transaction is ``BEGIN IMMEDIATE``, one writer at a time for
  the whole database file (also across processes), and the position is
  ``MAX(position) + 1`` read inside it.
* PostgreSQL: the append first takes ``pg_advisory_xact_lock(<key of this
  table>)``, a transaction-scoped lock released only after the commit is
  visible; the position is ``MAX(position) + 1`` read after taking it. The next
  appender gets the lock only once the previous append is visible to every new
  snapshot, so a reader that sees position ``n`` also sees every position below.
  The cost is that appends to one store are serialised (see the bench); reads
  never take the lock. It relies on READ COMMITTED (the default isolation), where
  the ``MAX(position)`` read after the lock sees the previous append's commit.

``integration_tests/patterns/test_es_postgres.py`` shows a naive store (a
``BIGSERIAL`` position, no lock) skipping a late commit in the same scenario.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from eventbus.codec import decode_structured, encode_structured
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError
from eventbus.patterns.eventsourcing.memory import _leading_until
from eventbus.patterns.eventsourcing.parking import ParkedStoredEvent
from eventbus.patterns.eventsourcing.snapshots import Snapshot
from eventbus.patterns.eventsourcing.store import (
    ConcurrencyError,
    StoredEvent,
    check_append,
    duplicate_error,
)
from eventbus.patterns.schema import KINDS, create_parked_table_2, ready
from eventbus.patterns.sql import Database, Row, Transaction, blob_type

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
_ROWS_PER_INSERT = 100  # 7 parameters a row: under SQLite's 999-parameter limit
_COLUMNS = "position, stream_id, version, event_id, type, time_us, envelope"
_LAST = 2**62


def _micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICRO


class SQLEventStore:
    """An :class:`~eventbus.patterns.eventsourcing.store.EventStore` (and snapshot
    store, and :class:`~eventbus.patterns.eventsourcing.parking.ParkingStore`) in the
    tables ``<table>``, ``<table>_snapshots``, ``<table>_checkpoints`` and
    ``<table>_parked`` of a :class:`~eventbus.patterns.sql.Database` (see the module docs).

    ``SQLEventStore(db)`` shares a database you opened (and close);
    ``await SQLEventStore.connect(url)`` opens one that :meth:`close` closes.
    """

    def __init__(
        self, db: Database, *, table: str = "eventbus_events", owns_database: bool = False
    ) -> None:
        if not _NAME.match(table):
            raise ConfigurationError(
                f"table name {table!r} must be lower-case letters, digits and _ (at most 41)"
            )
        self.db = db
        self.table = table
        self._owns = owns_database
        digest = hashlib.blake2b(table.encode(), digest_size=8).digest()
        self._lock_key = int.from_bytes(digest, "big", signed=True)

    @classmethod
    async def connect(cls, url: str, *, table: str = "eventbus_events") -> SQLEventStore:
        """Open the database at ``url`` (``sqlite:///...`` or ``postgresql://...``)."""
        return cls(await Database.connect(url), table=table, owns_database=True)

    async def setup(self) -> None:
        """Create the tables if they are missing; refuse tables of another schema
        version (:class:`~eventbus.patterns.schema.SchemaVersionError`: run
        ``eventbus db migrate``)."""
        blob = blob_type(self.db.dialect)
        t = self.table
        async with self.db.transaction() as tx:
            # Also the lock that keeps two setups at once from racing on CREATE.
            await ready(tx, KINDS["event store"], t, self.db.url)
            await tx.execute(f"""CREATE TABLE IF NOT EXISTS {t} (
                position BIGINT PRIMARY KEY,
                stream_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                event_id TEXT NOT NULL,
                type TEXT NOT NULL,
                time_us BIGINT NOT NULL,
                envelope {blob} NOT NULL,
                CONSTRAINT {t}_stream_version UNIQUE (stream_id, version),
                CONSTRAINT {t}_event_id UNIQUE (event_id))""")
            await tx.execute(f"""CREATE TABLE IF NOT EXISTS {t}_snapshots (
                stream_id TEXT NOT NULL,
                version BIGINT NOT NULL,
                type TEXT NOT NULL,
                schema INTEGER NOT NULL,
                state {blob} NOT NULL,
                PRIMARY KEY (stream_id, version))""")
            await tx.execute(f"""CREATE TABLE IF NOT EXISTS {t}_checkpoints (
                name TEXT PRIMARY KEY,
                position BIGINT NOT NULL)""")
            await create_parked_table_2(tx, f"{t}_parked", envelope=False)

    async def _serialise(self, tx: Transaction) -> None:
        # SQLite's BEGIN IMMEDIATE already admits one writer at a time.
        if tx.dialect == "postgres":
            await tx.execute("SELECT pg_advisory_xact_lock($1)", self._lock_key)

    # -- writing ---------------------------------------------------------------------

    async def append(
        self, stream_id: str, events: Sequence[Envelope], expected_version: int | None
    ) -> list[StoredEvent]:
        """See :meth:`EventStore.append`."""
        check_append(stream_id, events, expected_version)
        if not events:
            return []
        async with self.db.transaction() as tx:
            return await self.append_in(tx, stream_id, events, expected_version)

    async def append_in(
        self,
        tx: Transaction,
        stream_id: str,
        events: Sequence[Envelope],
        expected_version: int | None,
    ) -> list[StoredEvent]:
        """:meth:`append` inside your own transaction of this store's database, so
        other rows (a read model, a checkpoint) commit with the events or not at all.

        On PostgreSQL it holds the store's append lock until ``tx`` ends: keep the
        transaction short. Let its errors propagate so ``tx`` rolls back.
        """
        check_append(stream_id, events, expected_version)
        if not events:
            return []
        await self._serialise(tx)
        t = self.table
        # One round trip for where the rows go: the next position and, with an
        # expected version, whether that version exists (no hole may be left).
        if expected_version is None:
            position, start = await tx.fetchrow(  # type: ignore[misc]
                f"SELECT (SELECT COALESCE(MAX(position), 0) FROM {t}), "
                f"(SELECT COALESCE(MAX(version), 0) FROM {t} WHERE stream_id = $1)",
                stream_id,
            )
        else:
            start = expected_version
            position, found = await tx.fetchrow(  # type: ignore[misc]
                f"SELECT (SELECT COALESCE(MAX(position), 0) FROM {t}), "
                f"(SELECT COUNT(*) FROM {t} WHERE stream_id = $1 AND version = $2)",
                stream_id,
                start,
            )
            if start > 0 and not found:
                raise ConcurrencyError(
                    stream_id, expected_version, await self._version_below(tx, stream_id, position)
                )
        stored = [
            StoredEvent(position + i, stream_id, start + i, envelope)
            for i, envelope in enumerate(events, start=1)
        ]
        inserted = 0
        for chunk in range(0, len(stored), _ROWS_PER_INSERT):
            rows = stored[chunk : chunk + _ROWS_PER_INSERT]
            marks = ", ".join(
                "(" + ", ".join(f"${7 * r + c}" for c in range(1, 8)) + ")"
                for r in range(len(rows))
            )
            args: list[Any] = []
            for row in rows:
                args += [
                    row.position,
                    row.stream_id,
                    row.version,
                    row.envelope.id,
                    row.envelope.type,
                    _micros(row.envelope.time),
                    encode_structured(row.envelope),
                ]
            # The unique constraints decide, not a read before: a concurrent append
            # at the same version, or an event id already stored, leaves rows out,
            # and the count says so.
            inserted += await tx.execute(
                f"INSERT INTO {t} ({_COLUMNS}) VALUES {marks} ON CONFLICT DO NOTHING", *args
            )
        if inserted == len(stored):
            return stored
        known = await self._known(tx, [e.id for e in events], position)
        if known:
            if len(known) == len(events) and all(k.stream_id == stream_id for k in known):
                # A retried append: nothing was inserted (every id conflicted).
                order = {e.id: i for i, e in enumerate(events)}
                return sorted(known, key=lambda k: order[k.id])
            raise duplicate_error(stream_id, len(known), len(events))
        raise ConcurrencyError(
            stream_id, expected_version, await self._version_below(tx, stream_id, position)
        )

    async def _version_below(self, tx: Transaction, stream_id: str, position: int) -> int:
        """The stream's version without rows after ``position`` (this append's, which
        roll back)."""
        value = await tx.fetchval(
            f"SELECT COALESCE(MAX(version), 0) FROM {self.table} "
            "WHERE stream_id = $1 AND position <= $2",
            stream_id,
            position,
        )
        return int(value)

    async def _known(self, tx: Transaction, ids: list[str], below: int) -> list[StoredEvent]:
        """The events of ``ids`` stored before this append (position <= ``below``)."""
        found: list[StoredEvent] = []
        for chunk in range(0, len(ids), 500):
            part = ids[chunk : chunk + 500]
            marks = ", ".join(f"${i}" for i in range(2, len(part) + 2))
            found += _rows(
                await tx.fetch(
                    f"SELECT position, stream_id, version, envelope FROM {self.table} "
                    f"WHERE position <= $1 AND event_id IN ({marks})",
                    below,
                    *part,
                )
            )
        return found

    # -- reading ---------------------------------------------------------------------

    async def read_stream(
        self,
        stream_id: str,
        *,
        after_version: int = 0,
        to_version: int | None = None,
        until: datetime | None = None,
    ) -> list[StoredEvent]:
        """See :meth:`EventStore.read_stream`."""
        last = _LAST if to_version is None else to_version
        sql = (
            f"SELECT position, stream_id, version, envelope FROM {self.table} "
            "WHERE stream_id = $1 AND version > $2 AND version <= $3"
        )
        args: list[Any] = [stream_id, after_version, last]
        if until is not None:
            # Only the leading events up to ``until`` count; a later event followed
            # by an earlier one stops there (see _leading_until).
            sql += (
                " AND version < COALESCE((SELECT MIN(version) FROM "
                + self.table
                + " WHERE stream_id = $1 AND version > $2 AND time_us > $4), $3 + 1)"
            )
            args.append(_micros(until))
        async with self.db.transaction() as tx:
            rows = _rows(await tx.fetch(sql + " ORDER BY version", *args))
        return _leading_until(rows, until) if until is not None else rows

    async def stream_version(self, stream_id: str) -> int:
        """See :meth:`EventStore.stream_version`."""
        async with self.db.transaction() as tx:
            value = await tx.fetchval(
                f"SELECT COALESCE(MAX(version), 0) FROM {self.table} WHERE stream_id = $1",
                stream_id,
            )
        return int(value)

    async def read_all(self, after: int = 0, limit: int = 500) -> list[StoredEvent]:
        """See :meth:`EventStore.read_all` (gap-safe: module docs)."""
        async with self.db.transaction() as tx:
            return _rows(
                await tx.fetch(
                    f"SELECT position, stream_id, version, envelope FROM {self.table} "
                    "WHERE position > $1 ORDER BY position LIMIT $2",
                    after,
                    limit,
                )
            )

    async def last_position(self) -> int:
        """See :meth:`EventStore.last_position`."""
        async with self.db.transaction() as tx:
            return int(await tx.fetchval(f"SELECT COALESCE(MAX(position), 0) FROM {self.table}"))

    # -- checkpoints and snapshots ---------------------------------------------------

    async def get_checkpoint(self, name: str) -> int:
        """See :meth:`EventStore.get_checkpoint`."""
        async with self.db.transaction() as tx:
            value = await tx.fetchval(
                f"SELECT position FROM {self.table}_checkpoints WHERE name = $1", name
            )
        return 0 if value is None else int(value)

    async def set_checkpoint(self, name: str, position: int) -> None:
        """See :meth:`EventStore.set_checkpoint`."""
        async with self.db.transaction() as tx:
            await tx.execute(
                f"INSERT INTO {self.table}_checkpoints (name, position) VALUES ($1, $2) "
                "ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                name,
                position,
            )

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` (replacing one of the same stream and version)."""
        async with self.db.transaction() as tx:
            await tx.execute(
                f"INSERT INTO {self.table}_snapshots (stream_id, version, type, schema, state) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (stream_id, version) DO UPDATE "
                "SET type = excluded.type, schema = excluded.schema, state = excluded.state",
                snapshot.stream_id,
                snapshot.version,
                snapshot.type,
                snapshot.schema,
                snapshot.state,
            )

    async def load_snapshot(
        self, stream_id: str, max_version: int | None = None
    ) -> Snapshot | None:
        """The latest snapshot of ``stream_id`` at or below ``max_version``."""
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                f"SELECT version, type, schema, state FROM {self.table}_snapshots "
                "WHERE stream_id = $1 AND version <= $2 ORDER BY version DESC LIMIT 1",
                stream_id,
                _LAST if max_version is None else max_version,
            )
        if row is None:
            return None
        return Snapshot(stream_id, int(row[0]), row[1], int(row[2]), bytes(row[3]))

    # -- parked events (the relay's) ---------------------------------------------------

    async def park(self, name: str, events: Sequence[ParkedStoredEvent]) -> None:
        """See :meth:`ParkingStore.park`."""
        async with self.db.transaction() as tx:
            await tx.executemany(
                f"INSERT INTO {self.table}_parked (name, position, stream_id, version, "
                "event_id, type, error, held_by, parked_at) VALUES ($1, $2, $3, $4, $5, $6, "
                "$7, $8, $9) ON CONFLICT (name, position) DO UPDATE SET error = "
                "excluded.error, held_by = excluded.held_by, parked_at = excluded.parked_at",
                [p.row() for p in events],
            )

    async def parked(self, name: str) -> list[ParkedStoredEvent]:
        """See :meth:`ParkingStore.parked`."""
        t = self.table
        async with self.db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT p.position, p.stream_id, p.version, p.event_id, p.type, p.error, "
                f"p.held_by, p.parked_at, e.envelope FROM {t}_parked p JOIN {t} e "
                "ON e.position = p.position WHERE p.name = $1 ORDER BY p.position",
                name,
            )
        return [ParkedStoredEvent.from_row(name, r) for r in rows]

    async def unpark(self, name: str, positions: Sequence[int]) -> None:
        """See :meth:`ParkingStore.unpark`."""
        async with self.db.transaction() as tx:
            await tx.executemany(
                f"DELETE FROM {self.table}_parked WHERE name = $1 AND position = $2",
                [(name, position) for position in positions],
            )

    async def close(self) -> None:
        """Close the database when this store opened it."""
        if self._owns:
            await self.db.close()


def _rows(rows: list[Row]) -> list[StoredEvent]:
    return [StoredEvent(int(r[0]), r[1], int(r[2]), decode_structured(bytes(r[3]))) for r in rows]
