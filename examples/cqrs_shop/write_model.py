"""The write side: an event-sourced Order aggregate (normalized: one stream per
order, every change an event) and the command handlers that load, decide, save."""

from __future__ import annotations

from eventbus.patterns.cqrs import CommandBus
from eventbus.patterns.eventsourcing import Aggregate, EventStore, Repository, applies
from examples.cqrs_shop.events import (
    Accepted,
    AddItem,
    ConfirmOrder,
    ItemAdded,
    OrderConfirmed,
    OrderPlaced,
    PlaceOrder,
)


class OrderRejectedError(ValueError):
    """A command the order's current state does not allow."""


class Order(Aggregate):
    """An order: lines may be added until it is confirmed, and a confirmed order
    has at least one line."""

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.customer = ""
        self.lines: list[dict[str, int | str]] = []
        self.confirmed = False

    def place(self, customer: str) -> None:
        if self.version:
            raise OrderRejectedError(f"order {self.id} exists already")
        self.record(OrderPlaced(order_id=self.id, customer=customer))

    def add(self, sku: str, qty: int, price_cents: int) -> None:
        if self.confirmed:
            raise OrderRejectedError(f"order {self.id} is confirmed; no more items")
        if qty <= 0:
            raise OrderRejectedError(f"quantity must be positive, not {qty}")
        self.record(ItemAdded(order_id=self.id, sku=sku, qty=qty, price_cents=price_cents))

    def confirm(self) -> None:
        if not self.lines:
            raise OrderRejectedError(f"order {self.id} has no items to confirm")
        if not self.confirmed:
            self.record(OrderConfirmed(order_id=self.id))

    @applies(OrderPlaced)
    def _placed(self, event: OrderPlaced) -> None:
        self.customer = event.customer

    @applies(ItemAdded)
    def _added(self, event: ItemAdded) -> None:
        self.lines.append({"sku": event.sku, "qty": event.qty, "price": event.price_cents})

    @applies(OrderConfirmed)
    def _confirmed(self, event: OrderConfirmed) -> None:
        self.confirmed = True


def order_commands(store: EventStore) -> CommandBus:
    """The shop's command handlers; each returns :class:`Accepted` or raises."""
    orders = Repository(store, Order, source="shop")
    commands = CommandBus()

    async def saved(order: Order) -> Accepted:
        stored = await orders.save(order)
        position = stored[-1].position if stored else await store.last_position()
        return Accepted(order_id=order.id, version=order.version, position=position)

    @commands.handler(PlaceOrder)
    async def place(command: PlaceOrder) -> Accepted:
        order = Order(command.order_id)
        order.place(command.customer)
        return await saved(order)

    @commands.handler(AddItem)
    async def add(command: AddItem) -> Accepted:
        order = await orders.load(command.order_id)
        order.add(command.sku, command.qty, command.price_cents)
        return await saved(order)

    @commands.handler(ConfirmOrder)
    async def confirm(command: ConfirmOrder) -> Accepted:
        order = await orders.load(command.order_id)
        order.confirm()
        return await saved(order)

    return commands
