"""The outbox table and the unit of work that writes events into it.

Inside ``async with outbox.unit_of_work() as tx:`` every ``bus.publish``,
``bus.send``, ``publish_many`` and ``ctx.publish``/``ctx.send`` made by this task
(and tasks it starts) is written to the outbox table in ``tx`` instead of going
to the broker: the state change and its events commit together or not at all.
:class:`~eventbus.patterns.outbox.relay.OutboxRelay` publishes the rows later.

::

    outbox = Outbox(db)
    await outbox.setup()
    bus = EventBus(publish_middleware=[outbox.middleware])

    async with outbox.unit_of_work() as tx:
        await tx.execute("INSERT INTO orders (id) VALUES ($1)", order_id)
        await bus.publish(OrderPlaced(order_id=order_id), key=order_id)
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from eventbus.codec import encode_structured
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError
from eventbus.middleware.base import PublishNext
from eventbus.patterns.schema import KINDS, ready
from eventbus.patterns.sql import Database, Transaction

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class _Work:
    outbox: Outbox
    tx: Transaction


_current: ContextVar[_Work | None] = ContextVar("eventbus_outbox_work", default=None)


def current_transaction() -> Transaction | None:
    """The transaction of the unit of work this task is in, or ``None`` outside one."""
    work = _current.get()
    return None if work is None else work.tx


def _refuse_nesting() -> None:
    if _current.get() is not None:
        raise ConfigurationError(
            "outbox unit of work inside another one: they do not nest; use the "
            "transaction the outer one gave you (outbox.current_transaction())"
        )


def check_table_name(name: str) -> str:
    """``name`` if it is a plain lower-case SQL identifier; raise ConfigurationError otherwise."""
    if not _IDENTIFIER.match(name):
        raise ConfigurationError(
            f"table name {name!r} is not a plain SQL identifier: use lower-case letters, "
            "digits and underscores, starting with a letter"
        )
    return name


def stream_of(topic: str, envelope: Envelope) -> str:
    """The ordering stream of an outbox row: its partition key, else its topic.

    Rows of one stream are published in the order they were written; rows of
    different streams may overtake each other (and go out in parallel when
    several relays run).
    """
    return envelope.partitionkey or f"topic:{topic}"


class Outbox:
    """Events written in the same transaction as the state change they describe.

    ``table`` is the outbox table (created by :meth:`setup`). Put
    :attr:`middleware` last in the bus's ``publish_middleware`` so tracing or
    mapping middleware has already shaped the envelopes that are stored; the
    relay publishes them as stored.
    """

    def __init__(self, db: Database, *, table: str = "eventbus_outbox") -> None:
        self.db = db
        self.table = check_table_name(table)
        # Set when a unit of work committed rows, so an in-process relay wakes at once.
        self.written = asyncio.Event()

    async def setup(self) -> None:
        """Create the table and its indexes if they do not exist (idempotent).

        A table of another schema version (one an earlier release made) is refused
        with :class:`~eventbus.patterns.schema.SchemaVersionError`, naming the
        command that migrates it (``eventbus db migrate``); a table of that name that
        is no outbox with :class:`~eventbus.patterns.schema.TableSchemaError`.
        """
        t = self.table
        if self.db.dialect == "postgres":
            columns = ("seq BIGSERIAL PRIMARY KEY", "BYTEA", "DOUBLE PRECISION")
        else:
            columns = ("seq INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB", "REAL")
        real = columns[2]
        async with self.db.transaction() as tx:
            # Also the lock that keeps two setups at once from racing on CREATE.
            await ready(tx, KINDS["outbox"], t, self.db.url)
            await tx.execute(
                f"CREATE TABLE IF NOT EXISTS {t} ({columns[0]}, event_id TEXT NOT NULL, "
                f"topic TEXT NOT NULL, stream TEXT NOT NULL, partition_key TEXT, "
                f"envelope {columns[1]} NOT NULL, created_at {real} NOT NULL, "
                f"sent_at {real}, failed_at {real}, error TEXT, claimed_by TEXT, "
                f"claimed_until {real})"
            )
            # The relay reads the unsent head of each stream; cleanup reads sent rows.
            await tx.execute(
                f"CREATE INDEX IF NOT EXISTS {t}_unsent ON {t} (stream, seq) WHERE sent_at IS NULL"
            )
            await tx.execute(
                f"CREATE INDEX IF NOT EXISTS {t}_sent ON {t} (sent_at) WHERE sent_at IS NOT NULL"
            )

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[Transaction]:
        """A transaction that also receives this task's publishes as outbox rows.

        Commits the caller's statements and the events together when the block
        ends, rolls both back when it raises. Units of work do not nest.
        """
        _refuse_nesting()  # before the transaction: SQLite's would wait on itself
        async with self.db.transaction() as tx:
            with self.within(tx):
                yield tx
        self.written.set()

    @contextmanager
    def within(self, tx: Transaction) -> Iterator[Transaction]:
        """Route this task's publishes into the outbox in ``tx``, a transaction of
        this outbox's database that the caller opened and commits (an inbox's,
        a saga store's). :meth:`unit_of_work` is this plus the transaction."""
        _refuse_nesting()
        token = _current.set(_Work(self, tx))
        try:
            yield tx
        finally:
            _current.reset(token)

    async def add(self, tx: Transaction, topic: str, envelopes: Sequence[Envelope]) -> None:
        """Write ``envelopes`` for ``topic`` into the outbox inside ``tx`` (what the
        middleware does; call it yourself to store ready envelopes explicitly)."""
        now = time.time()
        rows = [
            (e.id, topic, stream_of(topic, e), e.partitionkey, encode_structured(e), now)
            for e in envelopes
        ]
        await tx.executemany(
            f"INSERT INTO {self.table} (event_id, topic, stream, partition_key, envelope, "
            "created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            rows,
        )

    async def middleware(
        self, topic: str, envelopes: Sequence[Envelope], call_next: PublishNext
    ) -> None:
        """Publish middleware: inside this outbox's unit of work, store the envelopes
        in its transaction instead of publishing; elsewhere, publish as usual."""
        work = _current.get()
        if work is None or work.outbox is not self:
            await call_next(topic, envelopes)
            return
        await self.add(work.tx, topic, envelopes)

    async def failed(self) -> list[tuple[int, str, str]]:
        """Rows the broker refused for good (``(seq, event_id, error)``), oldest first.

        The relay parks such a row and holds the rest of its stream behind it, so
        the stream's order is kept; :meth:`retry_failed` or :meth:`discard` it."""
        async with self.db.transaction() as tx:
            rows = await tx.fetch(
                f"SELECT seq, event_id, error FROM {self.table} "
                "WHERE failed_at IS NOT NULL AND sent_at IS NULL ORDER BY seq"
            )
        return [(int(seq), str(event_id), str(error)) for seq, event_id, error in rows]

    async def retry_failed(self, seq: int) -> bool:
        """Let the relay try parked row ``seq`` (and its stream) again."""
        return await self._change_parked(
            f"UPDATE {self.table} SET failed_at = NULL, error = NULL "
            "WHERE seq = $1 AND failed_at IS NOT NULL",
            seq,
        )

    async def discard(self, seq: int) -> bool:
        """Give up on parked row ``seq``: delete it, releasing its stream."""
        return await self._change_parked(
            f"DELETE FROM {self.table} WHERE seq = $1 "
            "AND failed_at IS NOT NULL AND sent_at IS NULL",
            seq,
        )

    async def _change_parked(self, sql: str, seq: int) -> bool:
        """Run ``sql`` on parked row ``seq``; True when it changed that row."""
        async with self.db.transaction() as tx:
            changed = await tx.execute(sql, seq)
        return bool(changed == 1)

    async def pending(self) -> int:
        """How many rows wait to be published."""
        async with self.db.transaction() as tx:
            return int(
                await tx.fetchval(f"SELECT count(*) FROM {self.table} WHERE sent_at IS NULL")
            )
