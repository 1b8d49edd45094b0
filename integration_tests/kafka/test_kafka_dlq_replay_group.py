"""On Kafka, a replayed dead letter reaches the failed group through its retry topic."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest

from eventbus import DeadLetters, Envelope, EventBus, RetryPolicy
from eventbus.deadletters import dlq_topic

pytestmark = [pytest.mark.broker("kafka"), pytest.mark.timeout(180)]

NO_RETRY = RetryPolicy(max_attempts=1, initial_delay=0.0, jitter=0.0)


async def _scenario(url: str, to_group: bool | None) -> Counter[str]:
    topic = f"replay-{uuid.uuid4().hex[:10]}"
    runs: Counter[str] = Counter()
    billed, dead_lettered, audited = asyncio.Event(), asyncio.Event(), asyncio.Event()
    broken = True
    bus = EventBus.from_url(url, retry=NO_RETRY, source="replay-test")

    @bus.subscribe(topic, group="billing", start_from="earliest")
    async def bill(envelope: Envelope) -> None:
        runs["billing"] += 1
        if broken:
            raise ValueError("card declined")
        billed.set()

    @bus.subscribe(topic, group="audit", start_from="earliest")
    async def audit(envelope: Envelope) -> None:
        runs["audit"] += 1
        audited.set()

    @bus.subscribe(dlq_topic(topic, "billing"), group="watch", start_from="earliest")
    async def watch(envelope: Envelope) -> None:
        dead_lettered.set()

    async with bus:
        await bus.publish_envelopes(topic, [Envelope.create(type="t", source="s")])
        await asyncio.wait_for(dead_lettered.wait(), 60)
        await asyncio.wait_for(audited.wait(), 60)
        broken = False
        assert await DeadLetters(bus.adapter).replay(topic, "billing", to_group=to_group) == 1
        await asyncio.wait_for(billed.wait(), 60)
        await asyncio.sleep(1.0)  # room for a wrong second run in "audit" to show
    return runs


def test_replay_reaches_only_the_failed_group(kafka_url: str) -> None:
    runs = asyncio.run(_scenario(kafka_url, None))
    assert runs == {"billing": 2, "audit": 1}


def test_replay_to_the_whole_topic_reaches_every_group(kafka_url: str) -> None:
    runs = asyncio.run(_scenario(kafka_url, False))
    assert runs == {"billing": 2, "audit": 2}
