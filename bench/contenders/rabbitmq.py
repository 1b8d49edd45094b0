"""Contenders on RabbitMQ: eventbus, a hand-written pipelined aio-pika loop doing the
same work, and FastStream's ``RabbitBroker`` (defaults, and ``logger=None``).

Same work for each: publish N events with publisher confirms (persistent), consume
all N from a durable queue bound to a topic exchange, validate each into the same
pydantic model, ack each. See ``bench/README.md``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import fair
from runner import PROBE, Contender, Counter, Tick, Timing, chunks

from eventbus import EventBus

EVENTBUS = "eventbus"
RAW = "raw aio-pika (pipelined)"
FAIR = "raw aio-pika + CloudEvents headers"
FASTSTREAM = "faststream (defaults)"
FASTSTREAM_QUIET = "faststream (logger=None)"


@dataclass(frozen=True)
class Broker:
    """The broker under test."""

    url: str
    timeout: float
    prefetch: int


def new_topic(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:12]}"


async def eventbus_case(
    broker: Broker, events: Sequence[Tick], *, chunk: int, concurrency: int
) -> Timing:
    """``EventBus.from_url`` with its defaults; ``publish_many`` chunks gathered at once."""
    topic, group = new_topic("eventbus"), "bench"
    counter = Counter(len(events))
    bus = EventBus.from_url(broker.url, source="bench")

    @bus.subscribe(topic, group=group, concurrency=concurrency)
    async def handle(event: Tick) -> None:
        counter.see(event)

    async with bus:
        await bus.publish(PROBE, topic=topic)
        await counter.wait_probe(EVENTBUS, broker.timeout)
        counter.start()
        await asyncio.gather(
            *(bus.publish_many(part, topic=topic) for part in chunks(events, chunk))
        )
        counter.mark_published()
        await counter.wait_done(EVENTBUS, broker.timeout)
    return counter.timing()


async def raw_case(broker: Broker, events: Sequence[Tick], *, headers: bool = False) -> Timing:
    """Confirmed publishes gathered; a consumer callback that validates and acks.

    ``headers``: the fair contender, every message sent with a new event's ``ce-``
    headers (``fair.RABBITMQ``) and read back through them."""
    name = FAIR if headers else RAW
    topic = new_topic("raw")
    counter = Counter(len(events))
    connection = await aio_pika.connect_robust(broker.url)
    try:
        publishing = await connection.channel(publisher_confirms=True)
        consuming = await connection.channel()
        await consuming.set_qos(prefetch_count=broker.prefetch)
        exchange = await publishing.declare_exchange(
            topic, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await consuming.declare_queue(f"{topic}/bench", durable=True)
        await queue.bind(topic, "#")

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            if headers:
                counter.see(fair.read_binary(message.headers.items(), message.body, fair.RABBITMQ))
            else:
                counter.see(Tick.model_validate_json(message.body))
            await message.ack()

        await queue.consume(on_message)

        async def send(event: Tick) -> None:
            await exchange.publish(
                aio_pika.Message(
                    event.to_bytes(),
                    headers=fair.headers(fair.RABBITMQ) if headers else None,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key="bench.tick",
                mandatory=True,
            )

        await send(PROBE)
        await counter.wait_probe(name, broker.timeout)
        counter.start()
        await asyncio.gather(*(send(event) for event in events))
        counter.mark_published()
        await counter.wait_done(name, broker.timeout)
    finally:
        await connection.close()
    return counter.timing()


class Discard(io.StringIO):
    """A text stream that drops what it is given (log lines are still formatted)."""

    def write(self, text: str) -> int:
        return len(text)


async def faststream_case(
    broker: Broker, events: Sequence[Tick], *, chunk: int, access_log: bool
) -> Timing:
    """``RabbitBroker`` defaults; ``publish`` awaited, ``chunk`` gathered at a time."""
    from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue

    name = FASTSTREAM if access_log else FASTSTREAM_QUIET
    topic = new_topic("faststream")
    counter = Counter(len(events))
    options: dict[str, Any] = {} if access_log else {"logger": None}
    rabbit = RabbitBroker(broker.url, **options)
    exchange = RabbitExchange(topic, type=ExchangeType.TOPIC, durable=True)
    queue = RabbitQueue(f"{topic}/bench", durable=True, routing_key="#")

    @rabbit.subscriber(queue, exchange)
    async def handle(event: Tick) -> None:
        counter.see(event)

    await rabbit.start()
    access = logging.getLogger("faststream.access.rabbit")
    redirected = [h for h in access.handlers if isinstance(h, logging.StreamHandler)]
    originals = [h.setStream(Discard()) for h in redirected]
    try:
        await rabbit.publish(PROBE, routing_key="bench.tick", exchange=exchange)
        await counter.wait_probe(name, broker.timeout)
        counter.start()
        for part in chunks(events, chunk):
            await asyncio.gather(
                *(
                    rabbit.publish(event, routing_key="bench.tick", exchange=exchange)
                    for event in part
                )
            )
        counter.mark_published()
        await counter.wait_done(name, broker.timeout)
    finally:
        await rabbit.stop()
        for handler, original in zip(redirected, originals, strict=True):
            if original is not None:
                handler.setStream(original)
    return counter.timing()


def contenders(broker: Broker, *, chunk: int, concurrency: int) -> list[Contender]:
    """What ``bench_rabbitmq.py`` runs, eventbus first."""
    return [
        Contender(
            EVENTBUS,
            lambda ev: eventbus_case(broker, ev, chunk=chunk, concurrency=concurrency),
            ours=True,
        ),
        Contender(FAIR, lambda ev: raw_case(broker, ev, headers=True)),
        Contender(RAW, lambda ev: raw_case(broker, ev)),
        Contender(FASTSTREAM, lambda ev: faststream_case(broker, ev, chunk=chunk, access_log=True)),
        Contender(
            FASTSTREAM_QUIET, lambda ev: faststream_case(broker, ev, chunk=chunk, access_log=False)
        ),
    ]
