"""The at-most-once adapters (core NATS, Redis Pub/Sub) on their real brokers: a nacked
message is handed out again by the subscription itself after the delay, as the next
attempt (the broker keeps nothing to redeliver).

The conformance suite's nack case needs ``capabilities.redelivery``, which these
adapters do not claim, so it never runs on them; this is their own.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from typing import Any

import pytest

from eventbus.adapter import Adapter, Delivery, SubscribeOptions, Subscription
from eventbus.envelope import Envelope
from eventbus.registry_adapters import adapter_from_url
from integration_tests import harness

pytestmark = pytest.mark.timeout(60)


def _core_nats() -> str:
    return harness.require("nats").url.replace("nats://", "nats+core://", 1)


def _redis_pubsub() -> str:
    return harness.require("redis").url


async def _next(subscription: Subscription, timeout: float = 10.0) -> Delivery:
    iterator: Any = subscription.__aiter__()
    return await asyncio.wait_for(iterator.__anext__(), timeout)


def _envelope(n: int) -> Envelope:
    return Envelope(
        id=uuid.uuid4().hex,
        type="test.at-most-once",
        source="tests",
        time=datetime.datetime.now(datetime.UTC),
        data=str(n).encode(),
    )


@pytest.mark.parametrize("url_of", [_core_nats, _redis_pubsub], ids=["nats-core", "redis-pubsub"])
def test_a_nacked_message_is_handed_out_again_after_its_delay_as_the_next_attempt(
    url_of: Any,
) -> None:
    async def scenario() -> None:
        adapter: Adapter = adapter_from_url(url_of())
        assert not adapter.capabilities.redelivery  # the adapter's own redelivery
        await adapter.connect()
        topic = f"test-at-most-once-{uuid.uuid4().hex[:8]}"
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group="g", prefetch=1))
            sent = _envelope(0)
            await adapter.publish(topic, [sent])
            first = await _next(subscription)
            nacked_at = time.monotonic()
            await first.nack(delay=0.5)  # frees the only prefetch slot too
            again = await _next(subscription)
            assert time.monotonic() - nacked_at >= 0.5
            assert again.envelope is not None and again.envelope.id == sent.id
            assert (again.attempt, again.topic, again.group) == (2, topic, "g")
            await again.ack()
        finally:
            await adapter.close()

    asyncio.run(asyncio.wait_for(scenario(), 45))
