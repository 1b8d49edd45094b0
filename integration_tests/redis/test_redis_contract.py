"""Redis specifics of the subscription contract: Pub/Sub refuses what it cannot give
(at-least-once, competing members of a group) pointing to Streams, and Streams
deliver to one group through its route stream."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from eventbus_redis import RedisPubSubAdapter, RedisStreamsAdapter
from eventbus_redis.group_route import route_key
from redis.asyncio import Redis

from eventbus import EventBus
from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.envelope import Envelope
from eventbus.errors import GuaranteeUnavailableError


def run(scenario: Any) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def name(kind: str) -> str:
    return f"test-redis-contract-{kind}-{uuid.uuid4().hex[:8]}"


def envelope(n: int) -> Envelope:
    return Envelope.create(type="test.redis", source="tests", data=str(n).encode())


async def next_delivery(subscription: Subscription, timeout: float = 10.0) -> Delivery:
    iterator: Any = subscription.__aiter__()
    return await asyncio.wait_for(iterator.__anext__(), timeout)


def test_pubsub_refuses_explicit_at_least_once_pointing_to_streams(redis_url: str) -> None:
    bus = EventBus.from_url(redis_url.replace("redis://", "redis://user:hunter2@", 1))
    topic = name("alo")

    async def handle(envelope: Envelope) -> None: ...

    with pytest.raises(GuaranteeUnavailableError) as raised:
        bus.subscribe(topic, group="billing", delivery="at_least_once")(handle)
    text = str(raised.value)
    assert "redis+streams://" in text and topic in text and "hunter2" not in text


def test_pubsub_refuses_a_second_live_member_of_a_group(redis_url: str) -> None:
    """In this process or another (another adapter), while the first member lives; a
    member may join again once the first is gone, and other groups are untouched."""

    async def scenario() -> None:
        topic = name("members")
        one, two = RedisPubSubAdapter(redis_url), RedisPubSubAdapter(redis_url)
        await one.connect()
        await two.connect()
        try:
            first = await one.subscribe(topic, SubscribeOptions(group="g"))
            for adapter in (one, two):
                with pytest.raises(GuaranteeUnavailableError, match="redis\\+streams://"):
                    await adapter.subscribe(topic, SubscribeOptions(group="g"))
            other = await two.subscribe(topic, SubscribeOptions(group="h"))
            await one.publish(topic, [envelope(1)])
            for subscription in (first, other):
                delivery = await next_delivery(subscription)
                assert delivery.envelope is not None and delivery.envelope.data == b"1"
            await first.close()
            later = await two.subscribe(topic, SubscribeOptions(group="g"))
            await later.close()
        finally:
            await one.close()
            await two.close()

    run(scenario)


def test_streams_route_keeps_what_was_sent_before_the_group_subscribed(
    streams_url: str, redis_url: str
) -> None:
    """publish_to_group before the group's first subscription: delivered once it
    subscribes (its route group starts from the first entry), as the topic's, and
    acknowledged on the route stream."""

    async def scenario() -> None:
        topic = name("route")
        adapter = RedisStreamsAdapter(streams_url)
        raw = Redis.from_url(redis_url)
        await adapter.connect()
        try:
            await adapter.publish_to_group(topic, "g", [envelope(7)])
            subscription = await adapter.subscribe(topic, SubscribeOptions(group="g"))
            delivery = await next_delivery(subscription)
            assert delivery.topic == topic and delivery.group == "g"
            assert delivery.envelope is not None and delivery.envelope.data == b"7"
            await delivery.ack()
            key = route_key(topic, "g")
            for _ in range(100):
                if (await raw.xpending(key, "g"))["pending"] == 0:
                    break
                await asyncio.sleep(0.05)
            assert (await raw.xpending(key, "g"))["pending"] == 0, "the route entry stayed pending"
            await subscription.close()
        finally:
            await adapter.close()
            await raw.delete(topic, route_key(topic, "g"))
            await raw.aclose()

    run(scenario)


def test_pubsub_has_no_dead_letters_to_list(redis_url: str) -> None:
    """Pub/Sub keeps nothing, so `DeadLetters.list` (and `eventbus dlq`) says there is no
    such dead-letter topic, instead of consuming the channel for a while and reporting an
    empty list as if nothing had ever failed."""
    from eventbus.deadletters import DeadLetters
    from eventbus.errors import TopicNotFoundError

    async def scenario() -> None:
        adapter = RedisPubSubAdapter(redis_url)
        await adapter.connect()
        try:
            with pytest.raises(TopicNotFoundError) as raised:
                await DeadLetters(adapter, idle=0.2).list(name("typo"), "nobody")
            why = f"{raised.value} {raised.value.__cause__}"
            assert "keeps no messages" in why and "redis+streams://" in why, why
        finally:
            await adapter.close()

    run(scenario)
