"""The middleware the README sells, shown on the running saga: a duplicate delivery
skipped by idempotency and a poison message kept on the dead-letter queue.

(The third, a payment gateway that times out once and succeeds on retry, happens
inside the first order's saga: see ``payment_service.PaymentGateway``.)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from eventbus import DeadLetters, Envelope, EventBus
from examples.order_saga import payment_service
from examples.order_saga.events import OrderPlaced

Echo = Callable[[str], None]
Predicate = Callable[[logging.LogRecord], bool]


class LogWatch(logging.Handler):
    """Resolves a future when the handler logger writes a matching record, so the
    demo waits on what the middleware did instead of sleeping."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.waiters: list[tuple[Predicate, asyncio.Future[logging.LogRecord]]] = []

    def expect(self, predicate: Predicate) -> asyncio.Future[logging.LogRecord]:
        future = asyncio.get_running_loop().create_future()
        self.waiters.append((predicate, future))
        return future

    def emit(self, record: logging.LogRecord) -> None:
        for predicate, future in self.waiters:
            if not future.done() and predicate(record):
                future.set_result(record)

    def __enter__(self) -> LogWatch:
        self.logger = logging.getLogger("eventbus.handler")
        self.level = self.logger.level
        self.propagate = self.logger.propagate
        self.logger.setLevel(logging.INFO)
        # The demo tells these failures itself, one line each, instead of log records.
        self.logger.propagate = False
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)
        self.logger.propagate = self.propagate


def _about(event_id: str, group: str, text: str) -> Predicate:
    def matches(record: logging.LogRecord) -> bool:
        return (
            getattr(record, "event_id", None) == event_id
            and getattr(record, "group", None) == group
            and text in record.getMessage()
        )

    return matches


async def duplicate_skipped(
    watch: LogWatch, bus: EventBus, placed: Envelope, echo: Echo, timeout: float
) -> None:
    """Deliver ``placed`` (an OrderPlaced already handled) again: idempotency skips it."""
    skipped = watch.expect(_about(placed.id, payment_service.SERVICE, "duplicate"))
    await bus.publish_envelopes(OrderPlaced.default_topic(), [placed])
    await asyncio.wait_for(skipped, timeout)
    echo(
        f"[corr {(placed.correlationid or '?')[:8]}] {payment_service.SERVICE:<18} "
        f"duplicate delivery of OrderPlaced (id {placed.id[:8]}) skipped by idempotency: "
        "the customer is not charged twice"
    )


async def poison_dead_lettered(watch: LogWatch, bus: EventBus, echo: Echo, timeout: float) -> None:
    """Publish an OrderPlaced whose data is incomplete: it is dead-lettered at once."""
    poison = Envelope.create(
        type=OrderPlaced.event_type(),
        source="saga-demo",
        data=json.dumps({"order_id": "ord-poison"}).encode(),
    )
    group = payment_service.SERVICE
    dead = watch.expect(_about(poison.id, group, "dead-lettered"))
    await bus.publish_envelopes(OrderPlaced.default_topic(), [poison])
    await asyncio.wait_for(dead, timeout)
    letters = await DeadLetters(bus.adapter).list(OrderPlaced.default_topic(), group)
    (letter,) = [letter for letter in letters if letter.envelope.id == poison.id]
    echo(
        f"[corr {(poison.correlationid or poison.id)[:8]}] {group:<18} poison OrderPlaced "
        f"(id {poison.id[:8]}) dead-lettered after {letter.attempts} attempt: "
        f"{letter.exception.rsplit('.', 1)[-1]}: {letter.reason.rsplit(': ', 1)[-1][:70]}"
    )
    echo(
        f"{'':16}dead-letter queue {OrderPlaced.default_topic()}.{group}.dlq now holds it "
        f"(on a real broker: eventbus dlq list {OrderPlaced.default_topic()} {group})"
    )
