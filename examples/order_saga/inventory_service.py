"""Inventory service: reserves stock once an order is paid.

- on ``PaymentCharged``: reserves every line, publishes ``InventoryReserved``;
  if any line is out of stock, reserves nothing and publishes
  ``InventoryReservationFailed`` (the payment service then refunds)

Run it alone: ``eventbus run examples.order_saga.inventory_service:create_bus``.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from eventbus import Context, EventBus, MemoryIdempotencyStore
from eventbus.patterns.sagas import Choreography, StepFailedError
from examples.order_saga.events import (
    InventoryReservationFailed,
    InventoryReserved,
    OrderLine,
    PaymentCharged,
)

SERVICE = "inventory-service"
DEFAULT_STOCK: Mapping[str, int] = {"book": 1000, "mug": 500, "lamp": 0}


class OutOfStockError(Exception):
    """A line asks for more than is on hand."""


@dataclass
class Stock:
    """The service's own state: units on hand and reservations by order id."""

    on_hand: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_STOCK))
    reservations: dict[str, str] = field(default_factory=dict)

    def reserve(self, order_id: str, lines: Sequence[OrderLine]) -> str:
        """Reserve every line or none; returns the reservation id."""
        if order_id in self.reservations:
            return self.reservations[order_id]  # redelivery: already reserved
        for line in lines:
            available = self.on_hand.get(line.sku, 0)
            if available < line.quantity:
                raise OutOfStockError(f"{line.sku}: {line.quantity} wanted, {available} on hand")
        for line in lines:
            self.on_hand[line.sku] -= line.quantity
        reservation_id = self.reservations[order_id] = f"res-{uuid.uuid4().hex[:8]}"
        return reservation_id


def register(bus: EventBus, stock: Stock | None = None) -> Stock:
    """Subscribe the inventory service's handlers on ``bus``; returns its state."""
    stock = stock if stock is not None else Stock()
    bus.publishes(InventoryReservationFailed)  # built by the step's failed= (AsyncAPI)
    flow = Choreography(bus, group=SERVICE, key=lambda event: event.order_id)

    # Out of stock is the step's business failure: the helper publishes the
    # compensating InventoryReservationFailed, and the payment service refunds.
    @flow.step(
        PaymentCharged,
        failed=lambda event, reason: InventoryReservationFailed(
            order_id=event.order_id, reason=reason
        ),
    )
    async def reserve(event: PaymentCharged, ctx: Context) -> InventoryReserved:
        try:
            reservation_id = stock.reserve(event.order_id, event.lines)
        except OutOfStockError as exc:
            raise StepFailedError(f"out of stock: {exc}") from exc
        return InventoryReserved(order_id=event.order_id, reservation_id=reservation_id)

    return stock


def create_bus() -> EventBus:
    """The service as its own process, on ``$EVENTBUS_URL``."""
    bus = EventBus.from_env(source=SERVICE, idempotency=MemoryIdempotencyStore())
    register(bus)
    return bus
