"""The order saga with durable services: state in PostgreSQL (or SQLite), events
through a transactional outbox, duplicates dropped by an inbox table.

Each service is its own process::

    EVENTBUS_URL=kafka://localhost:9092 ORDER_SAGA_DATABASE_URL=postgresql://... \\
        python -m examples.order_saga.durable payment-service

What makes a crash (even SIGKILL) harmless at any point:

- a handler's state change, the id of the event it handled (its
  :class:`~eventbus.patterns.inbox.Inbox`) and the events it publishes (its
  :class:`~eventbus.patterns.outbox.Outbox`) commit in one transaction: all or nothing;
- the broker redelivers what was not acknowledged, and the inbox drops what was
  already handled, so nothing is applied twice;
- the relay publishes outbox rows after the commit, again after a crash if it
  died before marking them sent; consumers drop the duplicate by event id.

``ORDER_SAGA_RUN`` suffixes every topic (one set per test run);
``ORDER_SAGA_START_FROM=latest`` for brokers that keep no history (SQS);
``ORDER_SAGA_CRASH=refund:1,charge:3`` makes the process kill itself (SIGKILL)
right after the 1st commit of ``refund`` (and the 3rd of ``charge``), before the
broker hears the ack (for tests).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Literal

from eventbus import Context, EventBus
from eventbus.events import Message
from eventbus.patterns.inbox import Inbox
from eventbus.patterns.ordering import Resequencer, SQLSequenceStore
from eventbus.patterns.outbox import Outbox, OutboxRelay
from eventbus.patterns.sagas import Choreography, StepFailedError
from eventbus.patterns.sagas.choreography import transaction_of
from eventbus.patterns.sql import Database, Transaction
from examples.order_saga.events import (
    InventoryReservationFailed,
    InventoryReserved,
    OrderCancelled,
    OrderCompleted,
    OrderLine,
    OrderPlaced,
    PaymentCharged,
    PaymentRefunded,
)

SERVICES = ("order-service", "payment-service", "inventory-service")
STOCK = {"book": 1000, "mug": 500, "lamp": 0}
log = logging.getLogger("order_saga.durable")

SCHEMA = [
    "CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, status TEXT NOT NULL, "
    "total_cents INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS charges (order_id TEXT PRIMARY KEY, amount_cents INTEGER NOT NULL)",
    # No unique key on purpose: a refund applied twice would show as two rows.
    "CREATE TABLE IF NOT EXISTS refunds (order_id TEXT NOT NULL, amount_cents INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, on_hand INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS reservations (order_id TEXT PRIMARY KEY, lines TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ready (service TEXT PRIMARY KEY, pid INTEGER NOT NULL)",
]


def topic_of(run: str) -> Callable[[type[Message]], str]:
    """Each event class's topic for run ``run`` (its own topic, suffixed)."""
    return lambda cls: f"{cls.default_topic()}-{run}" if run else cls.default_topic()


async def create_schema(db: Database) -> None:
    """The services' tables and the initial stock (idempotent)."""
    async with db.transaction() as tx:
        for statement in SCHEMA:
            await tx.execute(statement)
        for sku, on_hand in STOCK.items():
            await tx.execute(
                "INSERT INTO stock (sku, on_hand) VALUES ($1, $2) ON CONFLICT (sku) DO NOTHING",
                sku,
                on_hand,
            )
    await SQLSequenceStore(db).setup()
    for name in SERVICES:
        await Outbox(db, table=outbox_table(name)).setup()
        await Inbox(db, table=inbox_table(name)).setup()


def outbox_table(service: str) -> str:
    """Each service's own outbox table, relayed by that service."""
    return f"eventbus_outbox_{service.split('-')[0]}"


def inbox_table(service: str) -> str:
    """Each service's own inbox table: the ids of the events it handled."""
    return f"eventbus_inbox_{service.split('-')[0]}"


_step: ContextVar[str] = ContextVar("order_saga_step", default="")


def parse_crashes(spec: str) -> dict[str, int]:
    """``"refund:1,charge:3"`` -> ``{"refund": 1, "charge": 3}``."""
    return {step: int(n) for step, n in (part.split(":") for part in spec.split(",") if part)}


@dataclass
class Service:
    """One service: its bus (publishing into its outbox), relay and handlers."""

    name: str
    db: Database
    bus: EventBus
    outbox: Outbox
    relay: OutboxRelay
    crashes: dict[str, int] = field(default_factory=dict)
    commits: dict[str, int] = field(default_factory=dict)

    def tx(self, ctx: Context, step: str) -> Transaction:
        """The handler's transaction (its state, inbox row and outbox rows)."""
        _step.set(step)
        tx = transaction_of(ctx)
        assert tx is not None, "handlers run in the service's inbox transaction"
        return tx

    def committed(self) -> None:
        """Committed, not yet acknowledged: the worst moment to die (crash tests)."""
        step = _step.get()
        self.commits[step] = self.commits.get(step, 0) + 1
        if self.crashes.get(step) == self.commits[step]:
            log.warning("%s: SIGKILL after commit %d of %s", self.name, self.commits[step], step)
            os.kill(os.getpid(), signal.SIGKILL)


class _CrashTestInbox(Inbox):
    """The inbox, telling the service when a handler's transaction committed."""

    def __init__(self, service: Service, table: str) -> None:
        super().__init__(service.db, table=table, outbox=service.outbox)
        self.service = service

    @asynccontextmanager
    async def handle(self, ctx: Context) -> AsyncIterator[Transaction | None]:
        async with super().handle(ctx) as tx:
            yield tx
        self.service.committed()


def build(
    name: str,
    url: str,
    db: Database,
    run: str,
    crashes: dict[str, int] | None = None,
    start_from: Literal["earliest", "latest"] = "earliest",
) -> Service:
    """The service ``name`` on broker ``url``, keeping state in ``db`` (tables made by
    :func:`create_schema`)."""
    outbox = Outbox(db, table=outbox_table(name))
    bus = EventBus.from_url(url, source=name, publish_middleware=[outbox.middleware])
    # A killed service leaves its relay's claim on the rows it was sending: a short
    # lease has the restarted one send them again within seconds.
    relay = OutboxRelay(outbox, bus, poll_interval=0.1, lease=5.0)
    service = Service(name, db, bus, outbox, relay, dict(crashes or {}))
    # The inbox's transaction also takes the outbox's rows: one commit for all.
    inbox = _CrashTestInbox(service, inbox_table(name))
    flow = Choreography(
        bus,
        group=name,
        key=lambda e: e.order_id,
        topic=topic_of(run),
        inbox=inbox,
        start_from=start_from,
    )
    {"order-service": _order, "payment-service": _payment, "inventory-service": _inventory}[name](
        service, flow
    )
    return service


def _order(service: Service, flow: Choreography) -> None:
    guard = Resequencer("order-status", SQLSequenceStore(service.db), on_gap="apply")
    flow.guard = (guard, lambda event: 3)  # one ending per order: the second is stale

    @flow.step(InventoryReserved)
    async def complete(event: InventoryReserved, ctx: Context) -> OrderCompleted:
        tx = service.tx(ctx, "complete")
        await tx.execute(
            "UPDATE orders SET status = 'completed' WHERE order_id = $1", event.order_id
        )
        return OrderCompleted(order_id=event.order_id)

    @flow.step(PaymentRefunded)
    async def cancel(event: PaymentRefunded, ctx: Context) -> OrderCancelled:
        tx = service.tx(ctx, "cancel")
        await tx.execute(
            "UPDATE orders SET status = 'cancelled' WHERE order_id = $1", event.order_id
        )
        return OrderCancelled(order_id=event.order_id, reason=event.reason)


def _payment(service: Service, flow: Choreography) -> None:
    @flow.step(OrderPlaced)
    async def charge(event: OrderPlaced, ctx: Context) -> PaymentCharged:
        tx = service.tx(ctx, "charge")
        await tx.execute(
            "INSERT INTO charges (order_id, amount_cents) VALUES ($1, $2)",
            event.order_id,
            event.total_cents,
        )
        return PaymentCharged(
            order_id=event.order_id,
            payment_id=f"pay-{event.order_id}",
            amount_cents=event.total_cents,
            lines=event.lines,
        )

    @flow.compensation(InventoryReservationFailed)
    async def refund(event: InventoryReservationFailed, ctx: Context) -> PaymentRefunded:
        tx = service.tx(ctx, "refund")
        amount = await tx.fetchval(
            "SELECT amount_cents FROM charges WHERE order_id = $1", event.order_id
        )
        await tx.execute(
            "INSERT INTO refunds (order_id, amount_cents) VALUES ($1, $2)", event.order_id, amount
        )
        return PaymentRefunded(
            order_id=event.order_id,
            payment_id=f"pay-{event.order_id}",
            amount_cents=amount,
            reason=event.reason,
        )


def _inventory(service: Service, flow: Choreography) -> None:
    @flow.step(
        PaymentCharged,
        failed=lambda e, why: InventoryReservationFailed(order_id=e.order_id, reason=why),
    )
    async def reserve(event: PaymentCharged, ctx: Context) -> InventoryReserved:
        tx = service.tx(ctx, "reserve")
        lock = " FOR UPDATE" if tx.dialect == "postgres" else ""
        for line in event.lines:
            on_hand = await tx.fetchval(f"SELECT on_hand FROM stock WHERE sku = $1{lock}", line.sku)
            if (on_hand or 0) < line.quantity:
                raise StepFailedError(f"out of stock: {line.sku}")
        for line in event.lines:
            await tx.execute(
                "UPDATE stock SET on_hand = on_hand - $2 WHERE sku = $1", line.sku, line.quantity
            )
        await tx.execute(
            "INSERT INTO reservations (order_id, lines) VALUES ($1, $2)",
            event.order_id,
            json.dumps([line.model_dump() for line in event.lines]),
        )
        return InventoryReserved(order_id=event.order_id, reservation_id=f"res-{event.order_id}")


async def place_order(
    db: Database, outbox: Outbox, bus: EventBus, run: str, order_id: str, lines: Sequence[OrderLine]
) -> None:
    """The order service's front door: the order row and OrderPlaced in one transaction."""
    total = sum(line.quantity * line.unit_price_cents for line in lines)
    async with outbox.unit_of_work() as tx:
        await tx.execute(
            "INSERT INTO orders (order_id, status, total_cents) VALUES ($1, 'placed', $2)",
            order_id,
            total,
        )
        event = OrderPlaced(
            order_id=order_id, customer_id="c", lines=list(lines), total_cents=total
        )
        await bus.publish(event, topic=topic_of(run)(OrderPlaced), key=order_id)


async def serve(name: str) -> None:
    """Run service ``name`` until SIGTERM (from the environment's settings)."""
    db = await Database.connect(os.environ["ORDER_SAGA_DATABASE_URL"])
    crash = os.environ.get("ORDER_SAGA_CRASH", "")
    start_from = "latest" if os.environ.get("ORDER_SAGA_START_FROM") == "latest" else "earliest"
    service = build(
        name,
        os.environ.get("EVENTBUS_URL", "memory://"),
        db,
        os.environ.get("ORDER_SAGA_RUN", ""),
        parse_crashes(crash),
        start_from,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with service.bus, service.relay:
        async with db.transaction() as tx:
            await tx.execute(
                "INSERT INTO ready (service, pid) VALUES ($1, $2) ON CONFLICT "
                "(service) DO UPDATE SET pid = $2",
                name,
                os.getpid(),
            )
        await stop.wait()
    await db.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {sys.argv[1]} %(message)s")
    asyncio.run(serve(sys.argv[1]))
