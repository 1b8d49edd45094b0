"""The read side: a denormalized view, one row per order with its totals and a row
per customer, kept by a projection that follows the event store."""

from __future__ import annotations

from dataclasses import dataclass

from eventbus.events import Message
from eventbus.patterns.cqrs import Projection
from eventbus.patterns.sql import Transaction
from examples.cqrs_shop.events import ItemAdded, OrderConfirmed, OrderPlaced


@dataclass(frozen=True)
class OrderSummary:
    order_id: str
    customer: str
    status: str
    items: int
    total_cents: int


class OrderSummaries(Projection):
    """``shop_order_summaries`` and ``shop_customer_totals``: what the order list
    and the customer page read, without a join or a replay."""

    handles = (OrderPlaced, ItemAdded, OrderConfirmed)

    async def create_tables(self, tx: Transaction) -> None:
        await tx.execute("""CREATE TABLE IF NOT EXISTS shop_order_summaries (
            order_id TEXT PRIMARY KEY, customer TEXT NOT NULL, status TEXT NOT NULL,
            items BIGINT NOT NULL, total_cents BIGINT NOT NULL)""")
        await tx.execute("""CREATE TABLE IF NOT EXISTS shop_customer_totals (
            customer TEXT PRIMARY KEY, orders BIGINT NOT NULL, spent_cents BIGINT NOT NULL)""")

    async def clear(self, tx: Transaction) -> None:
        await tx.execute("DELETE FROM shop_order_summaries")
        await tx.execute("DELETE FROM shop_customer_totals")

    async def apply(self, event: Message, tx: Transaction) -> None:
        if isinstance(event, OrderPlaced):
            await tx.execute(
                "INSERT INTO shop_order_summaries VALUES ($1, $2, 'open', 0, 0)",
                event.order_id,
                event.customer,
            )
        elif isinstance(event, ItemAdded):
            await tx.execute(
                "UPDATE shop_order_summaries SET items = items + $2, "
                "total_cents = total_cents + $3 WHERE order_id = $1",
                event.order_id,
                event.qty,
                event.qty * event.price_cents,
            )
        elif isinstance(event, OrderConfirmed):
            row = await tx.fetchrow(
                "UPDATE shop_order_summaries SET status = 'confirmed' "
                "WHERE order_id = $1 RETURNING customer, total_cents",
                event.order_id,
            )
            assert row is not None, f"confirmed order {event.order_id} was never placed"
            await tx.execute(
                "INSERT INTO shop_customer_totals VALUES ($1, 1, $2) ON CONFLICT (customer) "
                "DO UPDATE SET orders = shop_customer_totals.orders + 1, "
                "spent_cents = shop_customer_totals.spent_cents + excluded.spent_cents",
                row[0],
                row[1],
            )

    async def order(self, order_id: str) -> OrderSummary | None:
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                "SELECT order_id, customer, status, items, total_cents "
                "FROM shop_order_summaries WHERE order_id = $1",
                order_id,
            )
        return None if row is None else OrderSummary(*row)

    async def customer(self, customer: str) -> tuple[int, int]:
        """(confirmed orders, cents spent)."""
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                "SELECT orders, spent_cents FROM shop_customer_totals WHERE customer = $1", customer
            )
        return (0, 0) if row is None else (int(row[0]), int(row[1]))
