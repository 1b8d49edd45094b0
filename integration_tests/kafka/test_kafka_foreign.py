"""Foreign records through an ``EventBus`` (#18 defect 26 and the foreign-message class).

A tracing interceptor adds binary record headers to events other services publish;
a producer that does not speak CloudEvents publishes plain bytes with its own
headers. The first must be handled as the event it is; the second goes to the
dead-letter topic with its payload, its headers and its offset, and a replay puts
it back as it arrived.
"""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
from eventbus_kafka import KafkaAdapter
from eventbus_kafka.codec import encode

from eventbus import Context, DeadLetters, EventBus
from eventbus.adapter import RawMessage
from eventbus.deadletters import ListedDeadLetter
from eventbus.errors import TopicNotFoundError
from eventbus.testing.conformance import Collector, Ping, on_topic
from integration_tests.kafka.test_kafka_adapter import run, unique

pytestmark = [pytest.mark.broker("kafka"), pytest.mark.timeout(120)]

TRACE = {"x-trace-bin": bytes.fromhex("ff00fe80c3d8"), "x-tenant": b"acme"}


def test_an_event_with_a_binary_foreign_header_is_handled(kafka_url: str) -> None:
    """Binary mode (the record key as partitionkey) and structured mode, each with a
    non-UTF-8 header a tracing interceptor added: both run the handler; nothing is
    dead-lettered."""

    async def scenario() -> None:
        event_cls = on_topic(Ping, unique("foreign-ok"))
        group = unique("g")
        seen: Collector[tuple[int, str | None]] = Collector("handled")
        bus = EventBus(KafkaAdapter(kafka_url), source="foreign-ok", shutdown_timeout=5)

        @bus.subscribe(event_cls, group=group)
        async def handle(event: Ping, ctx: Context) -> None:
            seen.add((event.seq, ctx.envelope.partitionkey))

        async with bus:
            adapter = bus.adapter
            assert isinstance(adapter, KafkaAdapter)
            topic = event_cls.default_topic()
            binary = encode(bus.envelope_for(event_cls(seq=1), key="k-1"))
            headers = [(n, v) for n, v in binary.headers if n != "ce_partitionkey"]
            await adapter.send_record(topic, binary.key, binary.value, [*headers, *TRACE.items()])
            structured = encode(bus.envelope_for(event_cls(seq=2)), structured=True)
            await adapter.publish_raw(
                topic, RawMessage(structured.value, {**dict(structured.headers), **TRACE})
            )
            await seen.wait(lambda items: len(items) >= 2, "both events", timeout=20)
            assert sorted(seen.items) == [(1, "k-1"), (2, None)], seen.items
            with pytest.raises(TopicNotFoundError):
                await DeadLetters(adapter).list(topic, group)

    run(scenario)


def test_a_foreign_record_is_dead_lettered_with_its_headers_and_offset_and_replays_raw(
    kafka_url: str,
) -> None:
    async def scenario() -> None:
        topic, group = unique("foreign-raw"), unique("g")
        raw = b"\x00\x01 not a cloudevent " + uuid.uuid4().bytes
        bus = EventBus(KafkaAdapter(kafka_url), source="foreign-raw", shutdown_timeout=5)
        arrived = asyncio.Event()

        @bus.subscribe(topic, group=group)
        async def handle(event: Ping) -> None:
            arrived.set()

        async with bus:
            adapter = bus.adapter
            await adapter.publish_raw(topic, RawMessage(raw, TRACE))
            dead = DeadLetters(adapter)
            letters = await _wait_letters(dead, topic, group, 1)
            letter = letters[0]
            assert letter.undecodable and letter.replayable, letter
            assert letter.raw == raw
            assert letter.raw_headers == TRACE
            # topic/partition/offset: the first record of whichever partition took it.
            assert re.fullmatch(rf"{topic}/\d+/0", letter.broker_message_id), letter
            assert await dead.replay(topic, group) == 1
            # The replayed record is the same bytes with the same headers: undecodable
            # again, so a second letter shows it came back as it arrived.
            again = await _wait_letters(dead, topic, group, 2)
            assert again[1].raw == raw and again[1].raw_headers == TRACE
            assert not arrived.is_set()

    run(scenario)


async def _wait_letters(
    dead: DeadLetters, topic: str, group: str, count: int
) -> list[ListedDeadLetter]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        try:
            letters = list(await dead.list(topic, group))
        except Exception:  # the DLQ topic is created with the first letter
            letters = []
        if len(letters) >= count or loop.time() > deadline:
            assert len(letters) >= count, f"{len(letters)} dead letters, wanted {count}"
            return letters
        await asyncio.sleep(0.3)
