"""Payment service: charges for placed orders, refunds when the saga compensates.

- on ``OrderPlaced``: charges the customer through the payment gateway, publishes
  ``PaymentCharged``; a gateway timeout is raised, so the retry middleware runs
  the handler again
- on ``InventoryReservationFailed``: refunds the charge, publishes ``PaymentRefunded``

Run it alone: ``eventbus run examples.order_saga.payment_service:create_bus``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from eventbus import Context, EventBus, MemoryIdempotencyStore
from eventbus.patterns.sagas import Choreography
from examples.order_saga.events import (
    InventoryReservationFailed,
    OrderPlaced,
    PaymentCharged,
    PaymentRefunded,
)

SERVICE = "payment-service"


@dataclass
class Charge:
    """Money taken for one order."""

    payment_id: str
    amount_cents: int
    refunded: bool = False


class GatewayTimeoutError(Exception):
    """The payment gateway did not answer in time; trying again may work."""


@dataclass
class PaymentGateway:
    """Stands in for a remote payment API. Orders in ``flaky`` time out on their
    first try (the demo uses it to show a retry); ``echo`` tells the story."""

    flaky: set[str] = field(default_factory=set)
    echo: Callable[[str], None] | None = None
    attempts: dict[str, int] = field(default_factory=dict)

    async def charge(self, order_id: str, amount_cents: int, ctx: Context) -> None:
        self.attempts[order_id] = self.attempts.get(order_id, 0) + 1
        if order_id in self.flaky and self.attempts[order_id] == 1:
            if self.echo is not None:
                self.echo(
                    f"[corr {ctx.correlation_id[:8]}] {SERVICE:<18} payment gateway "
                    f"timed out on attempt {ctx.attempt} for order={order_id}; the "
                    "retry middleware runs the handler again"
                )
            raise GatewayTimeoutError(f"payment gateway timed out charging order {order_id}")


@dataclass
class Ledger:
    """The service's own state: charges by order id, and the gateway it charges through."""

    charges: dict[str, Charge] = field(default_factory=dict)
    gateway: PaymentGateway = field(default_factory=PaymentGateway)


def register(bus: EventBus, ledger: Ledger | None = None) -> Ledger:
    """Subscribe the payment service's handlers on ``bus``; returns its state."""
    ledger = ledger if ledger is not None else Ledger()
    flow = Choreography(bus, group=SERVICE, key=lambda event: event.order_id)

    @flow.step(OrderPlaced)
    async def charge(event: OrderPlaced, ctx: Context) -> PaymentCharged:
        # A redelivered OrderPlaced must not charge twice: reuse the first charge.
        # A gateway timeout is raised as it is: the retry middleware runs this again.
        existing = ledger.charges.get(event.order_id)
        if existing is None:
            await ledger.gateway.charge(event.order_id, event.total_cents, ctx)
            existing = ledger.charges[event.order_id] = Charge(
                payment_id=f"pay-{uuid.uuid4().hex[:8]}", amount_cents=event.total_cents
            )
        return PaymentCharged(
            order_id=event.order_id,
            payment_id=existing.payment_id,
            amount_cents=existing.amount_cents,
            lines=event.lines,
        )

    @flow.compensation(InventoryReservationFailed)
    async def refund(event: InventoryReservationFailed, ctx: Context) -> PaymentRefunded | None:
        charged = ledger.charges.get(event.order_id)
        if charged is None:
            ctx.logger.warning("no charge for order %s; nothing to refund", event.order_id)
            return None
        charged.refunded = True
        return PaymentRefunded(
            order_id=event.order_id,
            payment_id=charged.payment_id,
            amount_cents=charged.amount_cents,
            reason=event.reason,
        )

    return ledger


def create_bus() -> EventBus:
    """The service as its own process, on ``$EVENTBUS_URL``."""
    bus = EventBus.from_env(source=SERVICE, idempotency=MemoryIdempotencyStore())
    register(bus)
    return bus
