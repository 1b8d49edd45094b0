"""Browsing topics and dead letters on Kafka leaves nothing behind on the broker.

``KafkaAdapter.read`` assigns every partition to a consumer without a group, reads
from the earliest offset to the end offsets of the moment and stops: no consumer
group, no committed offset, no topic created. ``DeadLetters.list`` uses it, so
listing creates no ``eventbus-dlq-browse-*`` group nor any ``.retry`` topic, and
says which letters a replay already republished.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from eventbus_kafka import KafkaAdapter
from eventbus_kafka.codec import encode

from eventbus.adapter import RawMessage
from eventbus.deadletters import DeadLetters, dead_letter_envelope, dlq_topic
from eventbus.envelope import Envelope
from eventbus.errors import TopicNotFoundError

pytestmark = [pytest.mark.broker("kafka"), pytest.mark.timeout(120)]


def run(scenario: Coroutine[Any, Any, None], timeout: float = 90.0) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def event(n: int, key: str | None = None) -> Envelope:
    return Envelope.create(
        type="test.browse", source="kafka-tests", data=b'{"n":%d}' % n, partitionkey=key
    )


def letter(topic: str, group: str, n: int) -> Envelope:
    return dead_letter_envelope(
        event(n, key=f"k{n}"),
        reason="ValueError: boom",
        topic=topic,
        group=group,
        attempts=3,
        exc=ValueError("boom"),
    )


async def broker_state(adapter: KafkaAdapter) -> tuple[set[str], set[str]]:
    """(topics, consumer groups) the cluster knows."""
    admin = AIOKafkaAdminClient(**adapter.client_options())
    await admin.start()
    try:
        topics = set(await admin.list_topics())
        groups = {str(g[0]) for g in await admin.list_consumer_groups()}
    finally:
        await admin.close()
    return topics, groups


async def next_millisecond() -> None:
    """Return once the wall clock's millisecond (a record timestamp's unit) moved on.

    Not a wait for an event: a pause of two clock ticks of the timestamp's unit.
    """
    await asyncio.sleep(0.002)


def test_kafka_codec_writes_kafka_binding_headers() -> None:
    """The core codec defaults to ce-; the Kafka adapter asks for the ce_ of its binding."""
    record = encode(event(1, key="k").evolve(subject="s"))
    names = {name for name, _ in record.headers}
    assert {"ce_id", "ce_source", "ce_type", "ce_subject", "content-type"} <= names
    assert all(name == "content-type" or name.startswith("ce_") for name in names)


def test_read_browses_every_partition_to_the_end_and_creates_nothing(kafka_url: str) -> None:
    async def scenario() -> None:
        adapter = KafkaAdapter(kafka_url + ("&" if "?" in kafka_url else "?") + "partitions=3")
        await adapter.connect()
        try:
            topic = unique("browse")
            sent = [event(n, key=f"key-{n}") for n in range(6)]
            for envelope in sent:  # one by one: record timestamps give the order
                await adapter.publish(topic, [envelope])
                # A lone publish is sent at once (no linger) and can come back
                # within the same millisecond: keep the timestamps distinct.
                await next_millisecond()
            await adapter.publish_raw(topic, RawMessage(b"not a cloudevent"))
            _, groups_before = await broker_state(adapter)

            started = time.monotonic()
            records = await adapter.read(topic)
            assert time.monotonic() - started < 10  # stops at the end, no idle wait
            ids = [r.envelope.id if r.envelope else None for r in records]
            assert ids == [e.id for e in sent] + [None]
            assert records[-1].raw == b"not a cloudevent" and records[-1].decode_error
            assert len({r.message_id for r in records}) == 7
            assert [r.envelope.partitionkey for r in records if r.envelope] == [
                f"key-{n}" for n in range(6)
            ]
            assert [r.message_id for r in await adapter.read(topic, limit=3)] == [
                r.message_id for r in records[:3]
            ]
            assert [r.message_id for r in await adapter.read(topic)] == [
                r.message_id for r in records
            ]  # reading consumed nothing

            missing = unique("no-such-topic")
            with pytest.raises(TopicNotFoundError, match=f"{missing!r} does not exist"):
                await adapter.read(missing)
            topics, groups = await broker_state(adapter)
            assert missing not in topics
            assert groups == groups_before
        finally:
            await adapter.close()

    run(scenario())


def test_dead_letters_list_creates_no_group_or_topic_and_shows_replays(kafka_url: str) -> None:
    async def scenario() -> None:
        adapter = KafkaAdapter(kafka_url)
        await adapter.connect()
        try:
            topic, group = unique("orders"), "billing"
            name = dlq_topic(topic, group)
            letters = [letter(topic, group, n) for n in range(3)]
            for dead in letters:
                await adapter.publish(name, [dead])
            topics_before, groups_before = await broker_state(adapter)
            browser = DeadLetters(adapter, idle=10.0)

            started = time.monotonic()
            for _ in range(3):
                listed = await browser.list(topic, group)
                assert [r.envelope.id for r in listed] == [d.id for d in letters]
                assert not any(r.replayed for r in listed)
            assert time.monotonic() - started < 20  # no idle wait per call
            assert listed[0].reason == "ValueError: boom" and listed[0].attempts == 3

            # To the whole topic, so the republished events can be read back from it
            # (replay to the group alone is test_kafka_dlq_replay_group.py's business).
            assert await browser.replay(topic, group, limit=2, to_group=False) == 2
            listed = await browser.list(topic, group)
            assert [r.replayed for r in listed] == [True, True, False]
            assert [
                r.envelope.id for r in await browser.list(topic, group, include_replayed=False)
            ] == [letters[2].id]
            assert await browser.replay(topic, group, to_group=False) == 1
            assert await browser.replay(topic, group, to_group=False) == 0
            assert all(r.replayed for r in await browser.list(topic, group))
            republished = await adapter.read(topic)
            assert [r.envelope.id for r in republished if r.envelope] == [d.id for d in letters]

            with pytest.raises(TopicNotFoundError, match="no such dead-letter topic"):
                await browser.list(topic, "biling")
            with pytest.raises(TopicNotFoundError, match="no such dead-letter topic"):
                await browser.replay(topic, "biling")

            topics, groups = await broker_state(adapter)
            assert groups == groups_before, "browsing or replaying created a consumer group"
            assert topics - topics_before == {f"{name}.replayed", topic}
        finally:
            await adapter.close()

    run(scenario())
