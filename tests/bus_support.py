"""Shared helpers of the tests: a per-test memory broker, waiting inboxes, DLQ reads, a
delivery that records its settlement, random envelopes."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from eventbus import Command, Envelope, Event, EventBus, MemoryAdapter
from eventbus.adapter import Delivery, SubscribeOptions
from eventbus.deadletters import dlq_topic

WAIT = 5.0
T = TypeVar("T")


class OrderPlaced(Event, type="test.bus.order-placed", topic="test-bus-orders"):
    order_id: str


class PaymentTaken(Event, type="test.bus.payment-taken", topic="test-bus-payments"):
    order_id: str


class ChargeCard(Command, type="test.bus.charge-card", topic="test-bus-charges"):
    order_id: str


class Collector(Generic[T]):
    """Collects what handlers saw; waits for a count with a timeout."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self._changed = asyncio.Event()

    def add(self, item: T) -> None:
        self.items.append(item)
        self._changed.set()

    async def wait_count(self, count: int, timeout: float = WAIT) -> list[T]:
        async def until() -> None:
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)
        return list(self.items)


def order_inbox(
    bus: EventBus, source: str | type[OrderPlaced], group: str = "g"
) -> Collector[OrderPlaced]:
    """Subscribe ``group`` of ``bus`` to ``source`` (a topic, or the event type); the
    inbox collects each :class:`OrderPlaced` it gets."""
    inbox: Collector[OrderPlaced] = Collector()

    @bus.subscribe(source, group=group)
    async def collect(event: OrderPlaced) -> None:
        inbox.add(event)

    return inbox


class Records(logging.Handler):
    """Keeps the log records of one logger while a test runs."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Records:
        self.logger.addHandler(self)
        self._level = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


def memory_url() -> str:
    """A broker of its own for each test, so runs never see each other's messages."""
    return f"memory://{uuid.uuid4()}"


def new_topic() -> str:
    return f"topic-{uuid.uuid4()}"


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 20) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))  # type: ignore[arg-type]


async def until(predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    """Wait until ``predicate()`` holds, for states that signal no event (log records,
    broker state); bounded by ``timeout``."""

    async def poll() -> None:
        while not predicate():  # noqa: ASYNC110 - nothing to wait on but the state itself
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def dead_letters(url: str, topic: str, group: str, count: int) -> list[Envelope]:
    return await read_topic(url, dlq_topic(topic, group), count)


async def read_topic(url: str, topic: str, count: int) -> list[Envelope]:
    """The first ``count`` envelopes on ``topic`` of the memory broker at ``url``."""
    adapter = MemoryAdapter(url)
    subscription = await adapter.subscribe(
        topic, SubscribeOptions(group=f"reader-{uuid.uuid4()}", start_from="earliest")
    )
    found: list[Envelope] = []

    async def collect() -> None:
        async for delivery in subscription:
            assert delivery.envelope is not None
            found.append(delivery.envelope)
            await delivery.ack()
            if len(found) == count:
                return

    try:
        await asyncio.wait_for(collect(), WAIT)
    finally:
        await subscription.close()
    return found


def dlq_size(url: str, topic: str, group: str) -> int:
    """How many dead letters the memory broker at ``url`` holds for (topic, group)."""
    log = MemoryAdapter(url).broker.topics.get(dlq_topic(topic, group))
    return 0 if log is None else len(log.log)


class FakeDelivery(Delivery):
    """A delivery that records how it was settled."""

    __slots__ = ("calls",)

    def __init__(self, envelope: Envelope | None, attempt: int = 1, **kw: object) -> None:
        super().__init__(
            topic=kw.pop("topic", "orders"),
            group=kw.pop("group", "billing"),  # type: ignore[arg-type]
            envelope=envelope,
            attempt=attempt,
            message_id="m-1",
            **kw,
        )  # type: ignore[arg-type]
        self.calls: list[tuple[str, float]] = []

    async def _ack(self) -> None:
        self.calls.append(("ack", 0.0))

    async def _nack(self, delay: float) -> None:
        self.calls.append(("nack", delay))

    async def _reject(self) -> None:
        self.calls.append(("reject", 0.0))


_ALPHABETS = (
    "abcdefghijklmnopqrstuvwxyz0123456789-",
    'quote"back\\slash',
    "\x00\x01\x1f\t\n\x7f control",
    "é€漢字🙂ü",
    "\u2028\u2029\ufeff",
)


def _text(rng: random.Random, longest: int) -> str:
    alphabet = rng.choice(_ALPHABETS)
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, longest)))


def random_envelope(rng: random.Random) -> Envelope:
    """An envelope with random attributes, extensions and data of every kind."""
    longest = rng.choice((8, 200, 3000))
    optional = {
        name: _text(rng, longest) if rng.random() < 0.7 else None
        for name in (
            "dataschema",
            "subject",
            "correlationid",
            "causationid",
            "partitionkey",
            "traceparent",
            "tracestate",
        )
    }
    content_type = rng.choice(
        (
            None,
            "application/json",
            "text/plain",
            "application/x-bin",
            "application/cloudevents+json",
        )
    )
    kind = rng.choice(("empty", "json", "spaced-json", "bytes", "text"))
    data = {
        "empty": b"",
        "json": json.dumps(
            {"k": _text(rng, longest)}, separators=(",", ":"), ensure_ascii=False
        ).encode(),
        "spaced-json": json.dumps({"k": _text(rng, longest)}, indent=2).encode(),
        "bytes": rng.randbytes(rng.randint(0, 5000)),
        "text": _text(rng, longest).encode("utf-8"),
    }[kind]
    extensions = {f"x{i}": _text(rng, longest) for i in range(rng.randint(0, 4))}
    return Envelope(
        id=_text(rng, longest),
        type=_text(rng, longest),
        source=_text(rng, longest),
        time=datetime(rng.randint(1, 9999), 1, 1, tzinfo=UTC)
        + timedelta(microseconds=rng.randint(0, 10**12)),
        data=data,
        datacontenttype=content_type,
        dataversion=rng.choice((1, 2**70)),
        extensions=extensions,
        **optional,
    )
