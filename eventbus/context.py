"""What a handler sees besides its event: the envelope, the attempt, and a way to reply."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from contextvars import ContextVar
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, Protocol, TypedDict, Unpack

from eventbus.adapter import Delivery
from eventbus.envelope import Envelope

if TYPE_CHECKING:
    from eventbus.events import Command, Message

current_envelope: ContextVar[Envelope | None] = ContextVar("eventbus_current", default=None)
"""The envelope being handled in this task; publishes made inside inherit its correlation."""

_logger = logging.getLogger("eventbus.handler")


class _Inherit(Enum):
    INHERIT = "inherit"


INHERIT: Final = _Inherit.INHERIT
"""``parent=`` default: the envelope being handled, if any. Pass ``parent=None`` to
start a new flow (own correlation id, no causation) from inside a handler."""

ParentOption = Envelope | None | _Inherit


class _NoResult(Enum):
    NO_RESULT = "no result"


NO_RESULT: Final = _NoResult.NO_RESULT
"""``Context.result`` until the handler has returned (also when it never ran)."""


class PublishOptions(TypedDict, total=False):
    """The options of ``publish``, ``send`` and ``publish_many`` (and their ``ctx``
    forms), typed so a checker catches a misspelled one.

    - ``key``: partition key; messages with the same key stay in order.
    - ``parent``: the envelope that caused this one (default: the one being
      handled); ``None`` starts a new flow.
    - ``correlation_id``: the flow's id, when not inherited from ``parent``.
    - ``subject``: the CloudEvents ``subject``.
    - ``extensions``: extra CloudEvents attributes (lower-case names).
    """

    key: str | None
    parent: ParentOption
    correlation_id: str | None
    subject: str | None
    extensions: dict[str, str] | None


class Publisher(Protocol):
    """The narrow interface a :class:`Context` replies on (the bus implements it)."""

    async def publish(
        self, message: Message, *, topic: str | None = None, **options: Unpack[PublishOptions]
    ) -> Envelope:
        """Publish ``message``; returns its envelope once the broker confirmed it."""

    async def send(self, command: Command, **options: Unpack[PublishOptions]) -> Envelope:
        """Send ``command`` to the one group that handles it."""


class _ContextLogger(logging.LoggerAdapter[logging.Logger]):
    """Reads the attempt number at each record: retries change it after creation."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(_logger, {})
        self._ctx = ctx

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        ctx = self._ctx
        extra = {
            "event_id": ctx.envelope.id,
            "event_type": ctx.envelope.type,
            "correlation_id": ctx.correlation_id,
            "topic": ctx.topic,
            "group": ctx.group,
            "attempt": ctx.attempt,
        }
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        return msg, kwargs


class Context:
    """Passed to handlers that take a second argument.

    ``publish`` and ``send`` carry correlation (the flow's id) and causation (this
    event's id) to what they publish, so a flow can be traced across services::

        @bus.subscribe(OrderPlaced)
        async def charge(event: OrderPlaced, ctx: Context) -> None:
            ctx.logger.info("charging")
            await ctx.publish(PaymentCharged(order_id=event.order_id))

    ``attempt`` is the number of this run of the handler for this message, counted
    across redeliveries (see :class:`~eventbus.middleware.retry.RetryPolicy`);
    ``previous_attempts`` is how many runs came before this delivery. ``result``
    is what the handler returned (``NO_RESULT`` until it has): the reply to a request.
    """

    __slots__ = (
        "_logger",
        "attempt",
        "delivery",
        "envelope",
        "event",
        "group",
        "items",
        "previous_attempts",
        "publisher",
        "result",
        "topic",
    )

    def __init__(
        self,
        publisher: Publisher,
        delivery: Delivery,
        envelope: Envelope,
        *,
        previous_attempts: int | None = None,
    ) -> None:
        self.publisher = publisher
        self.delivery = delivery
        self.envelope = envelope
        self.topic = delivery.topic
        self.group = delivery.group
        self.previous_attempts = (
            max(0, delivery.attempt - 1) if previous_attempts is None else previous_attempts
        )
        self.attempt = self.previous_attempts + 1
        self.event: Message | None = None
        self.items: dict[str, Any] = {}
        self.result: object = NO_RESULT  # what the handler returned (a request's reply)
        self._logger: _ContextLogger | None = None

    @property
    def correlation_id(self) -> str:
        """The id shared by every message of this flow."""
        return self.envelope.correlationid or self.envelope.id

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger whose records carry event id, type, correlation id, topic, group and
        the current attempt."""
        if self._logger is None:
            self._logger = _ContextLogger(self)
        return self._logger

    async def publish(
        self, event: Message, *, topic: str | None = None, **options: Unpack[PublishOptions]
    ) -> Envelope:
        """Publish ``event`` (to ``topic``, default its class's) as caused by the
        message being handled (``parent=None`` starts a new flow instead)."""
        options.setdefault("parent", self.envelope)
        return await self.publisher.publish(event, topic=topic, **options)

    async def send(self, command: Command, **options: Unpack[PublishOptions]) -> Envelope:
        """Send ``command`` to its one handler group, caused by the message being handled."""
        options.setdefault("parent", self.envelope)
        return await self.publisher.send(command, **options)


_new = object.__new__


def handler_context(
    publisher: Publisher, delivery: Delivery, envelope: Envelope, previous_attempts: int
) -> Context:
    """``Context(publisher, delivery, envelope, previous_attempts=...)`` without the
    keyword ``__init__``: the runner makes one per delivery (slots set directly)."""
    ctx = _new(Context)
    ctx.publisher = publisher
    ctx.delivery = delivery
    ctx.envelope = envelope
    ctx.topic = delivery.topic
    ctx.group = delivery.group
    ctx.previous_attempts = previous_attempts
    ctx.attempt = previous_attempts + 1
    ctx.event = None
    ctx.items = {}
    ctx.result = NO_RESULT
    ctx._logger = None
    return ctx
