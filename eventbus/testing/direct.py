"""Call a handler directly, without a broker: a test ``Context`` that captures publishes.

::

    published = await call_handler(charge, OrderPlaced(order_id="1"), attempt=2)
    assert published == [PaymentCharged(order_id="1")]
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Unpack

from eventbus._deprecation import Renamed, renamed
from eventbus.adapter import Delivery
from eventbus.context import Context, PublishOptions, current_envelope
from eventbus.envelope import Envelope
from eventbus.events import Command, Message
from eventbus.middleware.retry import RetryPolicy
from eventbus.publishing import build_envelope, check_command
from eventbus.spec import Handler


class TestPublisher:
    """A :class:`~eventbus.context.Publisher` that keeps what it is given instead of
    sending it: ``messages`` (typed), ``envelopes`` (as the bus would build them) and
    ``topics`` (where each would go)."""

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, source: str = "test") -> None:
        self.source = source
        self.messages: list[Message] = []
        self.envelopes: list[Envelope] = []
        self.topics: list[str] = []

    async def publish(
        self, message: Message, *, topic: str | None = None, **options: Unpack[PublishOptions]
    ) -> Envelope:
        """Record ``message`` and return the envelope publishing it would send."""
        envelope = build_envelope(message, self.source, **options)
        self.messages.append(message)
        self.envelopes.append(envelope)
        self.topics.append(topic or message.default_topic())
        return envelope

    async def send(self, command: Command, **options: Unpack[PublishOptions]) -> Envelope:
        """Record ``command`` (refusing an event, as the bus does)."""
        check_command(command)
        return await self.publish(command, **options)


class _TestDelivery(Delivery):
    """A delivery that settles nowhere: direct calls have no broker."""

    __slots__ = ()

    async def _ack(self) -> None:
        return None

    async def _nack(self, delay: float) -> None:
        return None

    async def _reject(self) -> None:
        return None


def handler_context(
    event: Message | Envelope,
    *,
    attempt: int = 1,
    topic: str | None = None,
    group: str = "test",
    publisher: TestPublisher | None = None,
    source: str = "test",
    parent: Envelope | None = None,
) -> Context:
    """A :class:`Context` for ``event`` as if delivered on ``topic``/``group`` for the
    ``attempt``-th time; what the handler publishes goes to ``publisher``.
    ``parent`` makes the event's envelope caused by another (correlation carried)."""
    if isinstance(event, Envelope):
        envelope = event
        where = topic or "test"
    else:
        envelope = build_envelope(event, source, parent=parent if parent else None)
        where = topic or event.default_topic()
    delivery = _TestDelivery(
        topic=where, group=group, envelope=envelope, attempt=attempt, message_id="test"
    )
    ctx = Context(
        publisher or TestPublisher(source), delivery, envelope, previous_attempts=attempt - 1
    )
    if isinstance(event, Message):
        ctx.event = event
    return ctx


def _no_delay_retry() -> RetryPolicy:
    return RetryPolicy(
        max_attempts=3, in_process_attempts=3, initial_delay=0.0, max_delay=0.0, jitter=0.0
    )


def _immediate_retry(
    max_attempts: int = 3, *, in_process_attempts: int | None = None, **options: Any
) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=max_attempts,
        in_process_attempts=in_process_attempts or max_attempts,
        initial_delay=0.0,
        max_delay=0.0,
        jitter=0.0,
        **options,
    )


# Three spellings of "a retry policy without waits" became one, ``without_delays``.
_RENAMED: Renamed = {
    "NO_DELAY_RETRY": (
        "eventbus.testing.without_delays(RetryPolicy(max_attempts=3, in_process_attempts=3))",
        _no_delay_retry,
    ),
    "immediate_retry": (
        "eventbus.testing.without_delays(RetryPolicy(max_attempts=..., in_process_attempts=...))",
        lambda: _immediate_retry,
    ),
}


def __getattr__(name: str) -> Any:
    return renamed(__name__, name, _RENAMED)


async def call_handler(
    handler: Callable[..., Awaitable[None]] | Callable[..., None],
    event: Message | Envelope,
    *,
    attempt: int = 1,
    topic: str | None = None,
    group: str = "test",
    publisher: TestPublisher | None = None,
) -> list[Message]:
    """Run ``handler`` once on ``event`` with a test :class:`Context` (see
    :func:`handler_context`) and return what it published or sent, in order.

    No middleware runs: no retry, no dead letter; what the handler raises comes out.
    Pass your own ``publisher`` to read the envelopes too.
    """
    publisher = publisher or TestPublisher()
    ctx = handler_context(event, attempt=attempt, topic=topic, group=group, publisher=publisher)
    cls = type(event) if isinstance(event, Message) else None
    spec = Handler.wrap(handler, cls)
    token = current_envelope.set(ctx.envelope)
    try:
        arg = ctx.envelope if spec.wants_envelope or cls is None else event
        if spec.wants_context:
            await spec.fn(arg, ctx)
        else:
            await spec.fn(arg)
    finally:
        current_envelope.reset(token)
    return list(publisher.messages)
