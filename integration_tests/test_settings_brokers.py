"""The settings conformance test on the real brokers: what the shared options do.

``tests/test_settings_vocabulary.py`` proves the shared options parse the same on every
adapter; this proves the behaviour behind three of them, on each broker:

- ``start_from``: the one rule, applied by the core: a subscription's explicit value
  wins, the URL's is the default for subscriptions that give none, else ``latest``; a
  broker without replay (SQS) refuses ``earliest`` at subscribe whichever side asked.
- ``provision=false``: a missing resource is a ``ProvisioningError`` (a
  ``ConfigurationError``: the subscription gives up at once, visibly).
- ``XAdapter(settings=..., client=...)``: a client configured by the application is
  used as it is and left open when the adapter closes.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from eventbus import Envelope, EventBus, ProvisioningError, UnsupportedOperationError
from eventbus.adapter import SubscribeOptions
from eventbus.registry_adapters import adapter_from_url
from integration_tests import harness

pytestmark = pytest.mark.timeout(180)
WAIT = 30.0


def broker_url(name: str) -> str:
    """The harness's URL of broker ``name`` (``redis`` is Redis Streams here)."""
    if name == "sqs":
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        return f"{harness.require('sqs').url}&wait_seconds=1"
    if name == "redis":
        return harness.require("redis").url.replace("redis://", "redis+streams://", 1)
    if name == "nats":
        endpoint = harness.require("nats")
        return f"nats://{endpoint.host}:{endpoint.port}"
    return harness.client_url(harness.require(name))


def with_options(url: str, **options: object) -> str:
    return url + ("&" if "?" in url else "?") + "&".join(f"{k}={v}" for k, v in options.items())


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 150))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def envelope(n: int) -> Envelope:
    return Envelope.create(type="test.settings", source="settings-tests", data=b'{"n":%d}' % n)


class Seen:
    """The ``n`` of every envelope one group handled."""

    def __init__(self) -> None:
        self.items: list[int] = []
        self._changed = asyncio.Event()

    async def add(self, got: Envelope) -> None:
        self.items.append(int(got.data.decode().split(":")[1].rstrip("}")))
        self._changed.set()

    async def wait_for(self, n: int) -> list[int]:
        async with asyncio.timeout(WAIT):
            while n not in self.items:
                self._changed.clear()
                await self._changed.wait()
        return sorted(self.items)


# -- start_from ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kafka", "nats", "redis"])
def test_the_subscription_wins_over_the_url_and_the_url_is_the_default(name: str) -> None:
    """On a broker with replay: with ``start_from=earliest`` in the URL a new group that
    gives none reads what was published before it, one that says ``latest`` does not;
    with ``start_from=latest`` in the URL a group saying ``earliest`` reads it."""

    async def scenario() -> None:
        url, topic = broker_url(name), unique("startfrom")
        early = adapter_from_url(url)
        await early.connect()
        await early.publish(topic, [envelope(1)])
        await early.close()
        seen = {key: Seen() for key in ("default", "latest", "earliest")}
        eager = EventBus(with_options(url, start_from="earliest"), source="settings")
        eager.subscribe(topic, group=unique("default"))(seen["default"].add)
        eager.subscribe(topic, group=unique("latest"), start_from="latest")(seen["latest"].add)
        lazy = EventBus(with_options(url, start_from="latest"), source="settings")
        lazy.subscribe(topic, group=unique("earliest"), start_from="earliest")(seen["earliest"].add)
        async with eager, lazy:
            await eager.publish_envelopes(topic, [envelope(2)])
            for key in seen:
                await seen[key].wait_for(2)
            await seen["default"].wait_for(1)
            await seen["earliest"].wait_for(1)
            await asyncio.sleep(1.0)  # room for a wrong late delivery of 1 to show
        # Sorted: 1 and 2 carry no key, so a Kafka topic of several partitions may hand
        # them out in either order; which events each group read is what is checked here.
        assert sorted(seen["default"].items) == [1, 2]
        assert seen["latest"].items == [2]
        assert sorted(seen["earliest"].items) == [1, 2]

    run(scenario)


def test_a_queue_broker_starts_a_new_group_where_its_queue_starts() -> None:
    """RabbitMQ takes start_from (every adapter does) but a queue holds only what arrived
    once it was declared: ``earliest`` from the URL starts a new group there too."""

    async def scenario() -> None:
        url, topic = broker_url("rabbitmq"), unique("startfrom")
        seen = Seen()
        bus = EventBus(with_options(url, start_from="earliest"), source="settings")
        bus.subscribe(topic, group=unique("g"))(seen.add)
        async with bus:
            await bus.publish_envelopes(topic, [envelope(3)])
            assert await seen.wait_for(3) == [3]

    run(scenario)


def test_sqs_refuses_earliest_whichever_side_asked() -> None:
    """SQS keeps no history: ``earliest`` from the URL is refused at subscribe with the
    reason, as from the subscription; a subscription saying ``latest`` runs."""

    async def scenario() -> None:
        url, topic = with_options(broker_url("sqs"), start_from="earliest"), unique("sf")
        refused = EventBus(url, source="settings")
        refused.subscribe(topic, group=unique("g"))(Seen().add)
        with pytest.raises(UnsupportedOperationError, match="keeps no history"):
            async with refused:
                pass
        seen = Seen()
        bus = EventBus(url, source="settings")
        bus.subscribe(topic, group=unique("g"), start_from="latest")(seen.add)
        async with bus:
            await bus.publish_envelopes(topic, [envelope(4)])
            assert await seen.wait_for(4) == [4]

    run(scenario)


# -- provision=false -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kafka", "rabbitmq", "sqs", "nats", "redis"])
def test_provision_false_refuses_a_missing_resource(name: str) -> None:
    """Nothing is created: subscribing to a topic nobody made is a ProvisioningError
    naming it; so is publishing to one."""

    async def scenario() -> None:
        adapter = adapter_from_url(with_options(broker_url(name), provision="false"))
        topic = unique("missing")
        try:
            await adapter.connect()
            with pytest.raises(ProvisioningError) as raised:
                await adapter.subscribe(topic, SubscribeOptions(group=unique("g")))
            assert "provision" in str(raised.value)
            with pytest.raises(ProvisioningError):
                await adapter.publish(topic, [envelope(5)])
        finally:
            await adapter.close()

    run(scenario)


# -- a client of the application's own ------------------------------------------------------


async def _given_client(
    name: str, url: str
) -> tuple[Any, Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
    """A client configured by "the application": (client, prove it still works, close it)."""
    if name == "kafka":
        from aiokafka import AIOKafkaProducer
        from eventbus_kafka import KafkaSettings

        producer = AIOKafkaProducer(
            bootstrap_servers=list(KafkaSettings.from_url(url).bootstrap_servers), acks="all"
        )
        await producer.start()

        async def works() -> None:
            await producer.partitions_for(unique("probe"))

        return producer, works, producer.stop
    if name == "rabbitmq":
        import aio_pika

        connection = await aio_pika.connect_robust(url)

        async def opens_a_channel() -> None:
            assert not connection.is_closed
            await (await connection.channel()).close()

        return connection, opens_a_channel, connection.close
    if name == "sqs":
        import aioboto3

        session = aioboto3.Session()

        async def nothing() -> None:
            return None

        return session, nothing, nothing
    if name == "nats":
        import nats

        client = await nats.connect(url)

        async def flushes() -> None:
            await client.flush(timeout=5)

        return client, flushes, client.close
    from redis.asyncio import Redis

    redis = Redis.from_url(url.replace("redis+streams://", "redis://", 1))

    async def pings() -> None:
        assert await redis.ping()

    return redis, pings, redis.aclose


@pytest.mark.parametrize("name", ["kafka", "rabbitmq", "sqs", "nats", "redis"])
def test_a_given_client_is_used_as_it_is_and_left_open(name: str) -> None:
    """``XAdapter(settings=..., client=...)``: a round trip through the adapter on the
    application's client, which still works after the adapter closed."""

    async def scenario() -> None:
        url, topic = broker_url(name), unique("given")
        client, still_works, close_client = await _given_client(name, url)
        from_url: Any = adapter_from_url(url)
        adapter = type(from_url)(settings=from_url.settings, client=client)
        seen = Seen()
        bus = EventBus(adapter, source="settings")
        bus.subscribe(topic, group=unique("g"))(seen.add)
        try:
            async with bus:
                await bus.publish_envelopes(topic, [envelope(6)])
                assert await seen.wait_for(6) == [6]
            await still_works()
        finally:
            await close_client()

    run(scenario)
