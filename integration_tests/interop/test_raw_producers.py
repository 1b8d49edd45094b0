"""Plain JSON producers on each broker, with the broker's own client and no header at
all, consumed by an eventbus typed handler with ``wire_format="plain"`` (#21).

aiokafka, aio-pika, nats-py (core and JetStream), redis-py (Streams and Pub/Sub) and
boto3 (SNS to the subscribed queues) each publish ``{"order_id": ..., "amount": ...}``
as a service that never heard of CloudEvents would. Where the broker keeps a stable
position (Kafka, JetStream, Redis Streams) the event id is derived from it, so two
groups reading the same message see the same id (idempotency depends on it); SQS's
MessageId is stable per queue only, and RabbitMQ's comes from aio-pika's message_id.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

import pytest

from eventbus import Context, Envelope, Event, EventBus
from eventbus.testing.conformance import on_topic
from integration_tests import harness

pytestmark = [pytest.mark.timeout(120)]


class OrderPlaced(Event, type="interop.raw.order-placed", topic="interop-raw"):
    order_id: str
    amount: int = 0


BODY = {"order_id": "raw-1", "amount": 5}


async def consume_plain(
    url: str,
    topic: str,
    produce: Callable[[], Awaitable[None]],
    groups: int = 2,
    start_from: Literal["earliest"] | None = "earliest",
) -> list[tuple[OrderPlaced, Envelope]]:
    """Start a bus on ``url`` with ``groups`` plain subscriptions to ``topic``, run
    ``produce``, and return what each group's typed handler received (one message)."""
    event_cls = on_topic(OrderPlaced, topic)
    seen: asyncio.Queue[tuple[OrderPlaced, Envelope]] = asyncio.Queue()
    bus = EventBus(url, source="raw-test", shutdown_timeout=5)
    for n in range(groups):

        @bus.subscribe(event_cls, group=f"g{n}", wire_format="plain", start_from=start_from)
        async def handle(event: OrderPlaced, ctx: Context) -> None:
            await seen.put((event, ctx.envelope))

    async with bus:
        await produce()
        return [await asyncio.wait_for(seen.get(), 30) for _ in range(groups)]


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 90.0) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))  # type: ignore[arg-type]


def check(got: list[tuple[OrderPlaced, Envelope]], *, stable: bool) -> None:
    for event, envelope in got:
        assert (event.order_id, event.amount) == ("raw-1", 5), event
        assert envelope.type == OrderPlaced.event_type()
    ids = {envelope.id for _, envelope in got}
    if stable:
        assert len(ids) == 1, f"the broker position gave different ids per group: {ids}"


def _topic(name: str) -> str:
    return f"raw-{name}-{uuid.uuid4().hex[:8]}"


@pytest.mark.broker("kafka")
def test_aiokafka_producer(kafka_endpoint: harness.Endpoint) -> None:
    from aiokafka import AIOKafkaProducer

    topic = _topic("kafka")

    async def produce() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=f"{kafka_endpoint.host}:{kafka_endpoint.port}"
        )
        await producer.start()
        try:
            await producer.send_and_wait(topic, json.dumps(BODY).encode())
        finally:
            await producer.stop()

    async def scenario() -> None:
        check(await consume_plain(harness.client_url(kafka_endpoint), topic, produce), stable=True)

    run(scenario)


@pytest.mark.broker("rabbitmq")
def test_aio_pika_producer(rabbitmq_endpoint: harness.Endpoint) -> None:
    import aio_pika

    topic = _topic("rabbitmq")

    async def produce() -> None:
        connection = await aio_pika.connect(rabbitmq_endpoint.url)
        try:
            channel = await connection.channel()
            exchange = await channel.get_exchange(topic)  # eventbus's, of the topic
            await exchange.publish(aio_pika.Message(json.dumps(BODY).encode()), routing_key="x")
        finally:
            await connection.close()

    async def scenario() -> None:
        # aio-pika gives each message a message_id: the event id, the same in both groups.
        check(await consume_plain(rabbitmq_endpoint.url, topic, produce), stable=True)

    run(scenario)


@pytest.mark.parametrize("jetstream", [True, False], ids=["jetstream", "core"])
@pytest.mark.broker("nats")
def test_nats_py_producer(jetstream: bool, nats_endpoint: harness.Endpoint) -> None:
    import nats

    server = f"nats://{nats_endpoint.host}:{nats_endpoint.port}"
    topic = _topic("nats")

    async def produce() -> None:
        client = await nats.connect(server)
        try:
            if jetstream:  # into eventbus's stream of the topic, acknowledged
                await client.jetstream().publish(topic, json.dumps(BODY).encode())
            else:
                await client.publish(topic, json.dumps(BODY).encode())
                await client.flush()
        finally:
            await client.close()

    async def scenario() -> None:
        url = server if jetstream else server.replace("nats://", "nats+core://", 1)
        check(await consume_plain(url, topic, produce), stable=jetstream)

    run(scenario)


@pytest.mark.parametrize(
    "fields",
    [{"body": json.dumps(BODY)}, {"order_id": "raw-1", "amount": "5"}],
    ids=["body-field", "fields-as-data"],
)
@pytest.mark.broker("redis")
def test_redis_py_streams_producer(
    fields: dict[str, str], redis_endpoint: harness.Endpoint
) -> None:
    import redis.asyncio as redis

    topic = _topic("streams")

    async def produce() -> None:
        client = redis.Redis.from_url(redis_endpoint.url)
        try:
            await client.xadd(topic, fields)  # type: ignore[arg-type]
        finally:
            await client.aclose()

    async def scenario() -> None:
        url = redis_endpoint.url.replace("redis://", "redis+streams://", 1)
        check(await consume_plain(url, topic, produce), stable=True)

    run(scenario)


@pytest.mark.broker("redis")
def test_redis_py_pubsub_producer(redis_endpoint: harness.Endpoint) -> None:
    import redis.asyncio as redis

    topic = _topic("pubsub")

    async def produce() -> None:
        client = redis.Redis.from_url(redis_endpoint.url)
        try:
            await client.publish(topic, json.dumps(BODY))
        finally:
            await client.aclose()

    async def scenario() -> None:
        # Pub/Sub has no groups: one subscription (a second member would be refused).
        check(await consume_plain(redis_endpoint.url, topic, produce, groups=1), stable=False)

    run(scenario)


@pytest.mark.broker("sqs")
def test_boto3_sns_producer(sqs_url: str, sqs_endpoint: harness.Endpoint) -> None:
    import boto3

    topic = _topic("sqs")

    async def produce() -> None:
        def publish() -> None:
            sns = boto3.client(
                "sns",
                endpoint_url=f"http://{sqs_endpoint.host}:{sqs_endpoint.port}",
                region_name="us-east-1",
            )
            arn = sns.create_topic(Name=topic)["TopicArn"]  # eventbus's topic, as it is
            sns.publish(TopicArn=arn, Message=json.dumps(BODY))

        await asyncio.to_thread(publish)

    async def scenario() -> None:
        # No history on SQS: the groups' queues exist before the producer publishes.
        # Each queue's copy has its own MessageId: stable across redeliveries to one
        # group, different between groups.
        check(await consume_plain(sqs_url, topic, produce, start_from=None), stable=False)

    run(scenario)
