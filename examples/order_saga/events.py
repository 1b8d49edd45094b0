"""The events the three services exchange: the saga's contract.

Past tense, one topic per domain, and explicit ``type`` names so the classes can
be renamed or moved without breaking messages already on the broker.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from eventbus import Event


class OrderLine(BaseModel):
    """One product and how many of it."""

    model_config = ConfigDict(frozen=True)

    sku: str
    quantity: int
    unit_price_cents: int


class OrderEvent(Event, register=False):
    """Base of every saga event: each one is about an order."""

    order_id: str


# -- orders ------------------------------------------------------------------------


class OrderPlaced(OrderEvent, type="example.order.placed", topic="orders", version=1):
    """A customer placed an order; the saga starts here."""

    customer_id: str
    lines: list[OrderLine]
    total_cents: int


class OrderCompleted(OrderEvent, type="example.order.completed", topic="orders", version=1):
    """Paid and reserved: the saga ended well."""


class OrderCancelled(OrderEvent, type="example.order.cancelled", topic="orders", version=1):
    """The saga was compensated: nothing charged, nothing reserved."""

    reason: str


# -- payments ----------------------------------------------------------------------


class PaymentCharged(OrderEvent, type="example.payment.charged", topic="payments", version=1):
    """The customer was charged for the order."""

    payment_id: str
    amount_cents: int
    lines: list[OrderLine]


class PaymentRefunded(OrderEvent, type="example.payment.refunded", topic="payments", version=1):
    """Compensation: the charge was given back."""

    payment_id: str
    amount_cents: int
    reason: str


# -- inventory ---------------------------------------------------------------------


class InventoryReserved(
    OrderEvent, type="example.inventory.reserved", topic="inventory", version=1
):
    """Stock for every line of the order is set aside."""

    reservation_id: str


class InventoryReservationFailed(
    OrderEvent, type="example.inventory.reservation_failed", topic="inventory", version=1
):
    """Some line could not be reserved; nothing was reserved."""

    reason: str


TERMINAL_EVENTS: tuple[type[OrderEvent], ...] = (OrderCompleted, OrderCancelled)
"""The events that end a flow."""
