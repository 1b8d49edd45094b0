"""FastStream 0.7 and eventbus on one broker, both ways (#21): the migration path of
docs/migrating-from-faststream.md, proven on Kafka, RabbitMQ, NATS JetStream, core
NATS, Redis Streams and Redis Pub/Sub.

In each test FastStream publishes an ``OrderPlaced`` (its JSON, its
``correlation_id``) that an eventbus typed handler receives, and eventbus publishes
one that a FastStream subscriber receives as the same JSON with the same correlation
id. The one option each broker needs is the ``wire_format`` in ``PEERS``: ``"plain"``
on Kafka, RabbitMQ and NATS, ``"faststream"`` on Redis (FastStream's binary frame).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from faststream import Context as FsContext

from eventbus import Context, Event, EventBus
from eventbus.testing.conformance import on_topic
from integration_tests import harness

pytestmark = [pytest.mark.timeout(120)]


class OrderPlaced(Event, type="interop.order-placed", topic="interop-orders"):
    order_id: str
    amount: int = 0


Received = tuple[dict[str, Any], str | None]


@dataclass(frozen=True)
class Peer:
    """How FastStream and eventbus meet on one transport."""

    broker: str  # the harness's name of the broker
    wire_format: str  # the one option eventbus needs there
    eventbus_url: Callable[[harness.Endpoint], str]
    fs_client: Callable[[harness.Endpoint], Any]  # an unconnected FastStream broker
    # (topic, group) -> the arguments of FastStream's subscriber() for that group
    fs_subscription: Callable[[str, str], tuple[tuple[Any, ...], dict[str, Any]]]
    # topic -> the keyword arguments of FastStream's publish() to that topic
    fs_destination: Callable[[str], dict[str, Any]]


MESSAGE = FsContext("message")  # FastStream's message object, injected into a handler


async def fs_consumer(
    peer: Peer, endpoint: harness.Endpoint, topic: str, group: str, queue: asyncio.Queue[Received]
) -> Any:
    """A started FastStream broker whose one subscriber puts each body and correlation
    id it receives on ``queue``."""
    broker = peer.fs_client(endpoint)
    args, kwargs = peer.fs_subscription(topic, group)

    async def handle(body: dict[str, Any], message: Any = MESSAGE) -> None:
        await queue.put((body, message.correlation_id))

    broker.subscriber(*args, **kwargs)(handle)
    await broker.start()
    if peer.broker == "nats":
        # nats-py queues the SUB and returns; on core NATS a message published before
        # the server has it is dropped (no stream keeps it). nats-py's own flush() can
        # send its PING ahead of that SUB: eventbus's flush writes the SUB first.
        from eventbus_nats.wire import flush

        await flush(broker.connection, 5)
    elif kwargs.get("channel"):
        # redis-py sends SUBSCRIBE without reading its reply: wait until the server
        # counts this subscriber on the channel (eventbus's own group is the other one).
        await _until_subscribed(endpoint, kwargs["channel"], 2)
    return broker


async def _until_subscribed(endpoint: harness.Endpoint, channel: str, count: int) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(endpoint.url)
    try:
        for _ in range(500):
            [(_, subscribers)] = await client.pubsub_numsub(channel)
            if subscribers >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"FastStream's subscriber never reached channel {channel}")
    finally:
        await client.aclose()


def _kafka(endpoint: harness.Endpoint) -> Any:
    from faststream.kafka import KafkaBroker

    return KafkaBroker(f"{endpoint.host}:{endpoint.port}")


def _rabbit(endpoint: harness.Endpoint) -> Any:
    from faststream.rabbit import RabbitBroker

    return RabbitBroker(endpoint.url)


def _exchange(topic: str) -> Any:
    from faststream.rabbit import ExchangeType, RabbitExchange

    # eventbus's exchange of a topic: durable, of type topic, named as the topic.
    return RabbitExchange(topic, type=ExchangeType.TOPIC, durable=True)


def _rabbit_queue(topic: str, group: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    from faststream.rabbit import RabbitQueue

    return (RabbitQueue(group, routing_key="#", auto_delete=True), _exchange(topic)), {}


def _nats_server(endpoint: harness.Endpoint) -> str:
    return f"nats://{endpoint.host}:{endpoint.port}"


def _nats(endpoint: harness.Endpoint) -> Any:
    from faststream.nats import NatsBroker

    return NatsBroker(_nats_server(endpoint))


def _stream_of(topic: str) -> str:
    from eventbus_nats.provision import encode_name

    return f"EB_{encode_name(topic)}"  # eventbus's stream of a topic (stream_prefix EB)


def _js_consumer(topic: str, group: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    from faststream.nats import JStream
    from faststream.nats.schemas import PullSub

    stream = JStream(_stream_of(topic), subjects=[topic], declare=False)
    return (topic,), {"stream": stream, "durable": group, "pull_sub": PullSub(timeout=0.2)}


def _redis(endpoint: harness.Endpoint) -> Any:
    from faststream.redis import RedisBroker

    return RedisBroker(endpoint.url)


def _stream_group(topic: str, group: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    from faststream.redis import StreamSub

    return (), {"stream": StreamSub(topic, group=group, consumer="c1", last_id="0")}


PEERS = {
    "kafka": Peer(
        "kafka",
        "plain",
        harness.client_url,
        _kafka,
        lambda topic, group: ((topic,), {"group_id": group, "auto_offset_reset": "earliest"}),
        lambda topic: {"topic": topic},
    ),
    "rabbitmq": Peer(
        "rabbitmq",
        "plain",
        lambda e: e.url,
        _rabbit,
        _rabbit_queue,
        lambda topic: {"exchange": _exchange(topic), "routing_key": topic},
    ),
    "nats-jetstream": Peer(
        "nats",
        "plain",
        _nats_server,
        _nats,
        _js_consumer,
        lambda topic: {"subject": topic, "stream": _stream_of(topic)},
    ),
    "nats-core": Peer(
        "nats",
        "plain",
        lambda e: _nats_server(e).replace("nats://", "nats+core://", 1),
        _nats,
        lambda topic, group: ((topic,), {"queue": group}),
        lambda topic: {"subject": topic},
    ),
    "redis-streams": Peer(
        "redis",
        "faststream",
        lambda e: e.url.replace("redis://", "redis+streams://", 1),
        _redis,
        _stream_group,
        lambda topic: {"stream": topic},
    ),
    "redis-pubsub": Peer(
        "redis",
        "faststream",
        lambda e: e.url,
        _redis,
        lambda topic, group: ((), {"channel": topic}),
        lambda topic: {"channel": topic},
    ),
}


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 90.0) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))  # type: ignore[arg-type]


def _topic(name: str) -> str:
    return f"fs-{name}-{uuid.uuid4().hex[:8]}"


def _cases() -> list[Any]:
    return [
        pytest.param(name, marks=pytest.mark.broker(peer.broker)) for name, peer in PEERS.items()
    ]


@pytest.mark.parametrize("name", _cases())
def test_faststream_publishes_eventbus_handles(name: str, request: pytest.FixtureRequest) -> None:
    """A FastStream service's ``OrderPlaced`` reaches an eventbus typed handler with
    its correlation id, with the subscription's ``wire_format`` as the one option."""
    peer = PEERS[name]
    endpoint: harness.Endpoint = request.getfixturevalue(f"{peer.broker}_endpoint")

    async def scenario() -> None:
        event_cls = on_topic(OrderPlaced, _topic(name))
        topic = event_cls.default_topic()
        seen: asyncio.Queue[tuple[OrderPlaced, str | None]] = asyncio.Queue()
        bus = EventBus(peer.eventbus_url(endpoint), source="billing", shutdown_timeout=5)

        @bus.subscribe(event_cls, group="billing", wire_format=peer.wire_format)
        async def handle(event: OrderPlaced, ctx: Context) -> None:
            await seen.put((event, ctx.envelope.correlationid))

        async with bus:
            producer = peer.fs_client(endpoint)
            await producer.connect()
            try:
                body = {"order_id": "fs-1", "amount": 3}
                destination = peer.fs_destination(topic)
                await producer.publish(body, correlation_id="corr-from-faststream", **destination)
                event, correlation = await asyncio.wait_for(seen.get(), 30)
            finally:
                await producer.stop()
        assert (event.order_id, event.amount) == ("fs-1", 3)
        assert correlation == "corr-from-faststream"

    run(scenario)


@pytest.mark.parametrize("name", _cases())
def test_eventbus_publishes_faststream_handles(name: str, request: pytest.FixtureRequest) -> None:
    """eventbus's ``publish(wire_format=...)`` reaches a FastStream subscriber as the
    event's JSON, with the correlation id in FastStream's ``correlation_id``."""
    peer = PEERS[name]
    endpoint: harness.Endpoint = request.getfixturevalue(f"{peer.broker}_endpoint")

    async def scenario() -> None:
        event_cls = on_topic(OrderPlaced, _topic(name))
        topic = event_cls.default_topic()
        received: asyncio.Queue[Received] = asyncio.Queue()
        bus = EventBus(peer.eventbus_url(endpoint), source="orders", shutdown_timeout=5)
        audited: asyncio.Queue[OrderPlaced] = asyncio.Queue()

        # An eventbus group already on the topic (as in a migration, where the topic's
        # broker resources exist): it reads the same plain messages.
        @bus.subscribe(event_cls, group="audit", wire_format=peer.wire_format)
        async def audit(event: OrderPlaced) -> None:
            await audited.put(event)

        await bus.start()
        group = f"fs-{uuid.uuid4().hex[:6]}"
        consumer = await fs_consumer(peer, endpoint, topic, group, received)
        try:
            sent = await bus.publish(
                event_cls(order_id="eb-1", amount=4),
                wire_format=peer.wire_format,
                correlation_id="corr-from-eventbus",
            )
            body, correlation = await asyncio.wait_for(received.get(), 30)
            assert (await asyncio.wait_for(audited.get(), 30)).order_id == "eb-1"
        finally:
            await consumer.stop()
            await bus.stop()
        assert body == {"order_id": "eb-1", "amount": 4}
        assert correlation == "corr-from-eventbus" == sent.correlationid

    run(scenario)
