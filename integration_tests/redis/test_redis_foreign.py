"""Stream entries of other clients (issue #18 defects 10 and 26): an entry that is not
a CloudEvent is dead-lettered with all its fields and its entry id and replays as it
was; a binary field beside the ``ce_`` fields never makes a valid event poison."""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from collections.abc import Awaitable, Callable

import pytest
from eventbus_redis import RedisPubSubAdapter, RedisStreamsAdapter
from redis.asyncio import Redis

from eventbus import EventBus
from eventbus.adapter import RawMessage
from eventbus.deadletters import DeadLetters, ListedDeadLetter
from eventbus.errors import UnsupportedOperationError
from eventbus.testing.conformance import Ping, on_topic


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def name(kind: str) -> str:
    return f"test-redis-foreign-{kind}-{uuid.uuid4().hex[:8]}"


async def letters_of(
    dead: DeadLetters, topic: str, group: str, count: int
) -> list[ListedDeadLetter]:
    """The dead letters of ``topic``/``group`` once there are ``count`` of them."""
    letters: list[ListedDeadLetter] = []
    for _ in range(100):
        try:
            letters = await dead.list(topic, group)
        except Exception:  # no DLQ stream yet
            letters = []
        if len(letters) >= count:
            return letters
        await asyncio.sleep(0.1)
    raise AssertionError(f"{count} dead letter(s) expected, found {len(letters)}")


def test_a_foreign_entry_is_dead_lettered_with_its_fields_and_id_and_replays_as_it_was(
    streams_url: str, redis_url: str
) -> None:
    async def scenario() -> None:
        topic = name("entry")
        bus = EventBus.from_url(streams_url, source="tests")
        handled: list[int] = []

        @bus.subscribe(on_topic(Ping, topic), group="billing")
        async def handle(ping: Ping) -> None:
            handled.append(ping.seq)

        raw = Redis.from_url(redis_url)
        fields = {b"order_id": b"A-1001", b"amount_cents": b"129900", b"sig": b"\xff\x00\xfe"}
        try:
            async with bus:
                entry_id = (await raw.xadd(topic, fields)).decode()
                dead = DeadLetters(bus.adapter)
                [letter] = await letters_of(dead, topic, "billing", 1)
                assert letter.undecodable and "specversion" in letter.reason
                assert letter.raw_headers == {k.decode(): v for k, v in fields.items()}
                assert letter.raw == b""  # the entry had no body field
                assert letter.broker_message_id == f"{topic}/{entry_id}"
                assert (await raw.xpending(topic, "billing"))["pending"] == 0

                assert await dead.replay(topic, "billing") == 1
                entries = await raw.xrange(topic, f"({entry_id}", "+")
                assert [dict(entry[1]) for entry in entries] == [fields]  # as it was
                letters = await letters_of(dead, topic, "billing", 2)  # it fails again
                assert letters[1].raw_headers == letter.raw_headers
                assert letters[1].broker_message_id == f"{topic}/{entries[0][0].decode()}"
                assert handled == []
        finally:
            await raw.delete(topic, f"{topic}.billing.dlq", f"{topic}.billing.dlq.replayed")
            await raw.aclose()

    run(scenario)


def test_publish_raw_writes_the_headers_as_fields_and_the_payload_as_body(
    streams_url: str, redis_url: str
) -> None:
    async def scenario() -> None:
        topic = name("raw")
        adapter = RedisStreamsAdapter(streams_url)
        raw = Redis.from_url(redis_url)
        await adapter.connect()
        try:
            await adapter.publish_raw(
                topic, RawMessage(b"\x00payload", {"x-trace": b"\xff\x01", "k": b"v"})
            )
            await adapter.publish_raw(topic, RawMessage(b"", {"only": b"fields"}))
            await adapter.publish_raw(topic, RawMessage(b"just bytes"))
            entries = [dict(fields) for _, fields in await raw.xrange(topic)]
            assert entries == [
                {b"x-trace": b"\xff\x01", b"k": b"v", b"body": b"\x00payload"},
                {b"only": b"fields"},
                {b"body": b"just bytes"},
            ]
        finally:
            await raw.delete(topic)
            await raw.aclose()
            await adapter.close()

    run(scenario)


def test_a_valid_event_with_a_binary_foreign_field_is_handled(
    streams_url: str, redis_url: str
) -> None:
    """A tracing client's binary field beside the ``ce_`` fields (binary mode), and a
    structured-mode CloudEvent written with one: both are handled, none is poison."""

    async def scenario() -> None:
        from eventbus_redis.codec import encode_fields

        topic = name("binary-field")
        event = on_topic(Ping, topic)
        bus = EventBus.from_url(streams_url, source="tests")
        handled: list[int] = []

        @bus.subscribe(event, group="g")
        async def handle(ping: Ping) -> None:
            handled.append(ping.seq)

        raw = Redis.from_url(redis_url)
        try:
            async with bus:
                binary_mode: dict[str | bytes, str | bytes] = dict(
                    encode_fields(bus.envelope_for(event(seq=1)))[0]
                )
                binary_mode[b"x-b3-trace"] = b"\xff\xfe\x00\x81"
                await raw.xadd(topic, binary_mode)
                structured = json.dumps(
                    {
                        "specversion": "1.0",
                        "id": uuid.uuid4().hex,
                        "source": "/other",
                        "type": Ping.event_type(),
                        "datacontenttype": "application/json",
                        "time": datetime.datetime.now(datetime.UTC).isoformat(),
                        "data": {"seq": 2},
                    }
                ).encode()
                await bus.adapter.publish_raw(
                    topic,
                    RawMessage(
                        structured,
                        {
                            "content-type": b"application/cloudevents+json",
                            "x-b3-trace": b"\xc3\x28",
                        },
                    ),
                )
                for _ in range(100):
                    if sorted(handled) == [1, 2]:
                        break
                    await asyncio.sleep(0.1)
                assert sorted(handled) == [1, 2]
                assert not await raw.exists(f"{topic}.g.dlq"), "a valid event was dead-lettered"
        finally:
            await raw.delete(topic, f"{topic}.g.dlq")
            await raw.aclose()

    run(scenario)


def test_pubsub_publish_raw_refuses_headers(redis_url: str) -> None:
    async def scenario() -> None:
        adapter = RedisPubSubAdapter(redis_url)
        await adapter.connect()
        try:
            with pytest.raises(UnsupportedOperationError, match="no headers"):
                await adapter.publish_raw(name("raw"), RawMessage(b"x", {"a": b"1"}))
        finally:
            await adapter.close()

    run(scenario)
