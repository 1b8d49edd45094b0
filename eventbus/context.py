"""What a handler sees besides its event: the envelope, the attempt, and a bus to reply on."""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from eventbus.adapter import Delivery
from eventbus.envelope import Envelope

if TYPE_CHECKING:
    from eventbus.bus import EventBus
    from eventbus.events import Command, Message

current_envelope: ContextVar[Envelope | None] = ContextVar("eventbus_current", default=None)
"""The envelope being handled in this task; publishes made inside inherit its correlation."""

_logger = logging.getLogger("eventbus.handler")


class Context:
    """Passed to handlers that take a second argument.

    ``publish`` and ``send`` carry correlation (the flow's id) and causation (this
    event's id) to what they publish, so a flow can be traced across services::

        @bus.subscribe(OrderPlaced)
        async def charge(event: OrderPlaced, ctx: Context) -> None:
            ctx.logger.info("charging")
            await ctx.publish(PaymentCharged(order_id=event.order_id))
    """

    __slots__ = ("_logger", "attempt", "bus", "delivery", "envelope", "event", "group",
                 "items", "topic")

    def __init__(self, bus: EventBus, delivery: Delivery, envelope: Envelope) -> None:
        self.bus = bus
        self.delivery = delivery
        self.envelope = envelope
        self.topic = delivery.topic
        self.group = delivery.group
        self.attempt = delivery.attempt
        self.event: Message | None = None
        self.items: dict[str, Any] = {}
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None

    @property
    def correlation_id(self) -> str:
        """The id shared by every message of this flow."""
        return self.envelope.correlationid or self.envelope.id

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry event id, type, correlation id, topic and group."""
        if self._logger is None:
            self._logger = logging.LoggerAdapter(
                _logger,
                {
                    "event_id": self.envelope.id,
                    "event_type": self.envelope.type,
                    "correlation_id": self.correlation_id,
                    "topic": self.topic,
                    "group": self.group,
                    "attempt": self.attempt,
                },
            )
        return self._logger

    async def publish(self, event: Message, **options: Any) -> Envelope:
        """Publish ``event`` as caused by the message being handled."""
        return await self.bus.publish(event, parent=self.envelope, **options)

    async def send(self, command: Command, **options: Any) -> Envelope:
        """Send ``command`` to its one handler group, caused by the message being handled."""
        return await self.bus.send(command, parent=self.envelope, **options)
