"""The shop's messages: commands (what a client asks) and events (what happened)."""

from __future__ import annotations

from eventbus import Command, Event


class PlaceOrder(Command, type="shop.place-order", topic="shop.commands.place-order"):
    order_id: str
    customer: str


class AddItem(Command, type="shop.add-item", topic="shop.commands.add-item"):
    order_id: str
    sku: str
    qty: int
    price_cents: int


class ConfirmOrder(Command, type="shop.confirm-order", topic="shop.commands.confirm-order"):
    order_id: str


class OrderPlaced(Event, type="shop.order-placed", topic="shop.orders"):
    order_id: str
    customer: str


class ItemAdded(Event, type="shop.item-added", topic="shop.orders"):
    order_id: str
    sku: str
    qty: int
    price_cents: int


class OrderConfirmed(Event, type="shop.order-confirmed", topic="shop.orders"):
    order_id: str


class Accepted(Event, type="shop.accepted", topic="shop.replies"):
    """The reply to every shop command: the order's new version and the store
    position of its last event (what a client waits for to read its own write)."""

    order_id: str
    version: int
    position: int
