"""The inbox: a handler's database work and the record that the event was handled,
committed in one transaction, for exactly-once effects on state in that database.

The bus's idempotency middleware remembers handled ids in a store of its own,
so a crash after the handler's write and before that store's record (or the
broker's ack) can still apply the effect twice. The inbox writes the handled id
with the handler's own statements: either both commit or neither does, and a
redelivery of a committed event is acknowledged without running the handler::

    inbox = Inbox(db)
    await inbox.setup()

    @bus.subscribe(PaymentCharged, group="ledger")
    @inbox.handler
    async def book(event: PaymentCharged, ctx: Context, tx: Transaction) -> None:
        await tx.execute("UPDATE accounts SET balance = balance + $1 WHERE id = $2",
                         event.amount, event.account_id)

Each attempt (retries included) is its own transaction, so a failed attempt
leaves nothing behind. With ``outbox=``, what the handler publishes goes into
the outbox in the same transaction too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from eventbus.context import Context
from eventbus.errors import ConfigurationError
from eventbus.middleware.idempotency import idempotency_key
from eventbus.patterns.outbox.store import Outbox, check_table_name
from eventbus.patterns.schema import KINDS, ready
from eventbus.patterns.sql import Database, Transaction, real_type

InboxHandler = Callable[[Any, Context, Transaction], Awaitable[None]]


class Inbox:
    """Handled event ids in table ``table`` of ``db``, written in the handler's transaction.

    ``outbox``: an :class:`Outbox` on the same database; publishes made while
    handling go into it, in the same transaction.
    """

    def __init__(
        self, db: Database, *, table: str = "eventbus_inbox", outbox: Outbox | None = None
    ) -> None:
        if outbox is not None and outbox.db is not db:
            raise ConfigurationError(
                "Inbox(outbox=...) needs the outbox on the same Database object as the "
                "inbox, so both are written in one transaction"
            )
        self.db = db
        self.table = check_table_name(table)
        self.outbox = outbox

    async def setup(self) -> None:
        """Create the table if it does not exist (idempotent); refuse a table of another
        schema version (:class:`~eventbus.patterns.schema.SchemaVersionError`: run
        ``eventbus db migrate``)."""
        real = real_type(self.db.dialect)
        async with self.db.transaction() as tx:
            await ready(tx, KINDS["inbox"], self.table, self.db.url)
            await tx.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} "
                f"(key TEXT PRIMARY KEY, handled_at {real} NOT NULL)"
            )

    @asynccontextmanager
    async def handle(self, ctx: Context) -> AsyncIterator[Transaction | None]:
        """A transaction that records ``ctx``'s event as handled when it commits.

        Yields ``None`` when the event was already handled (skip the work)::

            async with inbox.handle(ctx) as tx:
                if tx is None:
                    return
                await tx.execute(...)

        Concurrent deliveries of one event wait for each other (PostgreSQL's
        unique index; SQLite's single writer): the second sees the first's record.
        """
        key = idempotency_key(ctx.topic, ctx.group, ctx.envelope.id)
        async with self.db.transaction() as tx:
            fresh = await tx.execute(
                f"INSERT INTO {self.table} (key, handled_at) VALUES ($1, $2) "
                "ON CONFLICT (key) DO NOTHING",
                key,
                time.time(),
            )
            if not fresh:
                ctx.logger.info("inbox: event already handled; skipped")
                yield None
            elif self.outbox is not None:
                with self.outbox.within(tx):
                    yield tx
            else:
                yield tx

    def handler(self, fn: InboxHandler) -> Callable[[Any, Context], Awaitable[None]]:
        """Decorator (under ``@bus.subscribe``): run ``fn(event, ctx, tx)`` in an inbox
        transaction, and not at all for an event already handled."""

        async def run(event: Any, ctx: Context) -> None:
            async with self.handle(ctx) as tx:
                if tx is not None:
                    await fn(event, ctx, tx)

        # Not functools.wraps: the bus reads the wrapper's own (event, ctx) signature.
        for name in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(run, name, getattr(fn, name, None))
        return run

    async def handled(self, ctx: Context) -> bool:
        """Whether ``ctx``'s event was handled (committed) by this group already."""
        key = idempotency_key(ctx.topic, ctx.group, ctx.envelope.id)
        async with self.db.transaction() as tx:
            found = await tx.fetchval(f"SELECT 1 FROM {self.table} WHERE key = $1", key)
            return found is not None

    async def cleanup(self, older_than: float) -> int:
        """Forget ids handled more than ``older_than`` seconds ago (keep it longer
        than the broker's redelivery horizon); returns how many."""
        async with self.db.transaction() as tx:
            return int(
                await tx.execute(
                    f"DELETE FROM {self.table} WHERE handled_at < $1", time.time() - older_than
                )
            )
