"""The shop's messages: commands (what a client asks) and events (what happened)."""

from __future__ import annotations

from eventbus import Command, Event


class PlaceOrder(
    Command, type="cqrs-shop.place-order", topic="cqrs-shop.commands.place-order", version=1
):
    order_id: str
    customer: str


class AddItem(Command, type="cqrs-shop.add-item", topic="cqrs-shop.commands.add-item", version=1):
    order_id: str
    sku: str
    qty: int
    price_cents: int


class ConfirmOrder(
    Command, type="cqrs-shop.confirm-order", topic="cqrs-shop.commands.confirm-order", version=1
):
    order_id: str


class OrderPlaced(Event, type="cqrs-shop.order-placed", topic="cqrs-shop.orders", version=1):
    order_id: str
    customer: str


class ItemAdded(Event, type="cqrs-shop.item-added", topic="cqrs-shop.orders", version=1):
    order_id: str
    sku: str
    qty: int
    price_cents: int


class OrderConfirmed(Event, type="cqrs-shop.order-confirmed", topic="cqrs-shop.orders", version=1):
    order_id: str


class Accepted(Event, type="cqrs-shop.accepted", topic="cqrs-shop.replies", version=1):
    """The reply to every shop command: the order's new version and the store
    position of its last event (what a client waits for to read its own write)."""

    order_id: str
    version: int
    position: int
