"""Batched publishing (``eventbus_redis.publish``): a batch is one script run, and each
message still gets its own reply, in order, with its own error.

Also the Pub/Sub codec's fast path (``codec.encode_message`` / ``decode_message``):
the same envelope as the core's structured codec, byte for byte in the data.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import Awaitable, Callable

import pytest
from eventbus_redis import RedisPubSubAdapter, RedisStreamsAdapter
from eventbus_redis import publish as bulk
from eventbus_redis.codec import decode_message, encode_message
from redis.exceptions import ResponseError

from eventbus.adapter import SubscribeOptions
from eventbus.codec import decode_structured, encode_structured
from eventbus.envelope import Envelope
from eventbus.errors import BatchPublishError

pytestmark = [pytest.mark.broker("redis"), pytest.mark.timeout(60)]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


def envelope(n: int, **extra: str) -> Envelope:
    return Envelope(
        id=uuid.uuid4().hex,
        type="test.bulk",
        source="tests",
        time=datetime.datetime.now(datetime.UTC),
        data=b'{"n":%d}' % n,
        datacontenttype="application/json",
        **extra,
    )


def name(kind: str) -> str:
    return f"test-redis-bulk-{kind}-{uuid.uuid4().hex[:8]}"


def test_a_batch_over_one_script_arrives_whole_and_in_order(streams_url: str) -> None:
    async def scenario() -> None:
        adapter = RedisStreamsAdapter(streams_url)
        await adapter.connect()
        topic = name("order")
        batch = [envelope(n) for n in range(bulk.MAX_PER_SCRIPT * 2 + 7)]
        try:
            await adapter.publish(topic, batch)
            stored = await adapter.read(topic)
            assert [r.envelope.id for r in stored if r.envelope] == [e.id for e in batch]
        finally:
            await adapter.client.delete(topic)
            await adapter.close()

    run(scenario)


def test_each_message_of_a_script_gets_its_own_error(streams_url: str) -> None:
    """One XADD refused inside the script (an odd field list) fails alone."""

    async def scenario() -> None:
        adapter = RedisStreamsAdapter(streams_url)
        await adapter.connect()
        topic = name("partial")
        command = bulk.xadd_many(topic, 0, [("a", "1"), ("b",), ("c", "3")])
        try:
            reply = await adapter.client.execute_command(*command)
            replies = bulk.expand([reply], [3])
            assert isinstance(replies[1], ResponseError), replies
            assert all(isinstance(r, bytes) for r in (replies[0], replies[2])), replies
            assert await adapter.client.xlen(topic) == 2
        finally:
            await adapter.client.delete(topic)
            await adapter.close()

    run(scenario)


def test_a_refused_batch_names_every_index(streams_url: str) -> None:
    async def scenario() -> None:
        adapter = RedisStreamsAdapter(streams_url)
        await adapter.connect()
        topic = name("wrongtype")
        await adapter.client.set(topic, "not a stream")
        try:
            with pytest.raises(BatchPublishError) as raised:
                await adapter.publish(topic, [envelope(n) for n in range(3)])
            assert sorted(raised.value.failures) == [0, 1, 2]
            assert "WRONGTYPE" in str(raised.value.failures[1])
        finally:
            await adapter.client.delete(topic)
            await adapter.close()

    run(scenario)


def test_pubsub_batch_arrives_in_order(redis_url: str) -> None:
    async def scenario() -> None:
        adapter = RedisPubSubAdapter(redis_url)
        await adapter.connect()
        topic = name("pubsub")
        batch = [envelope(n) for n in range(50)]
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group="g", prefetch=100))
            await adapter.publish(topic, batch)
            got = []
            async for delivery in subscription:
                assert delivery.envelope is not None, delivery.decode_error
                got.append(delivery.envelope)
                await delivery.ack()
                if len(got) == len(batch):
                    break
            assert got == batch
        finally:
            await adapter.close()

    run(scenario)


@pytest.mark.parametrize(
    "data, content_type",
    [
        (b'{"n":1,"s":"\\u00e9 \\" ,\\"data\\":"}', "application/json"),
        (b'{ "spaced" : [1, 2] }', "application/json"),  # not compact: kept byte for byte
        (b"[1,2]", None),
        (b"not json", "application/json"),  # data_base64
        (b"plain text", "text/plain"),
        (b"\x00\xff", "application/octet-stream"),
        (b"", "application/json"),
    ],
)
def test_pubsub_codec_round_trips_and_reads_the_core_codec(
    data: bytes, content_type: str | None
) -> None:
    sent = Envelope(
        id="1",
        type="t",
        source="s",
        time=datetime.datetime.now(datetime.UTC),
        data=data,
        datacontenttype=content_type,
        subject='x,"data":{',
        extensions={"tenant": "a"},
    )
    mine = encode_message(sent)
    decoded = decode_message(mine)
    assert (decoded.envelope, decoded.error) == (sent, None)
    core = decode_structured(mine)  # any structured reader gets the same event
    assert core.id == sent.id and core.subject == sent.subject
    assert decode_message(encode_structured(sent)).envelope == decode_structured(
        encode_structured(sent)
    )


def test_pubsub_codec_reads_data_that_is_not_last() -> None:
    """Another writer may put members after ``data``: the full reader takes them."""
    doc = b'{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"a":1},"subject":"late"}'
    envelope, error = decode_message(doc)[:2]
    assert error is None and envelope is not None
    assert (envelope.subject, envelope.data) == ("late", b'{"a":1}')


def test_pubsub_burst_is_read_from_the_buffer_and_other_replies_still_handled(
    redis_url: str,
) -> None:
    """A burst's messages after the first come from the connection's buffer (the
    installed redis-py still has the internals this relies on), and a reply that is
    not a message (a PONG on the subscribed connection) goes to redis-py."""
    from eventbus_redis.pubsub import PubSubSubscription

    async def scenario() -> None:
        adapter = RedisPubSubAdapter(redis_url)
        await adapter.connect()
        topic = name("burst")
        taken = 0
        original = PubSubSubscription._buffered

        def counting(self: PubSubSubscription, kinds: tuple[str, bytes]) -> object:
            nonlocal taken
            reply = original(self, kinds)
            taken += isinstance(reply, bytes)
            return reply

        try:
            PubSubSubscription._buffered = counting  # type: ignore[method-assign]
            subscription = await adapter.subscribe(topic, SubscribeOptions(group="g", prefetch=100))
            assert isinstance(subscription, PubSubSubscription)
            batch = [envelope(n) for n in range(20)]
            await adapter.publish(topic, batch[:10])
            await subscription._pubsub.ping()  # its PONG is buffered between messages
            await adapter.publish(topic, batch[10:])
            got = []
            async for delivery in subscription:
                got.append(delivery.envelope)
                await delivery.ack()
                if len(got) == len(batch):
                    break
            assert got == batch
            assert taken >= len(batch) // 2, taken
        finally:
            PubSubSubscription._buffered = original  # type: ignore[method-assign]
            await adapter.close()

    run(scenario)


def test_streams_reads_wait_for_a_quarter_of_the_prefetch(streams_url: str) -> None:
    """XREADGROUP asks for at least a quarter of the prefetch at a time (not one
    entry per freed slot, a round trip each)."""

    async def scenario() -> None:
        adapter = RedisStreamsAdapter(streams_url)
        await adapter.connect()
        topic = name("window")
        counts: list[int] = []
        client = adapter.client
        original = client.xreadgroup

        async def recording(*args: object, count: int | None = None, **kw: object) -> object:
            streams = kw.get("streams", args[2] if len(args) > 2 else {})
            if topic in streams:  # type: ignore[operator]  # the topic's reads, not the group route's
                counts.append(count or 0)
            return await original(*args, count=count, **kw)

        client.xreadgroup = recording  # type: ignore[method-assign]
        try:
            subscription = await adapter.subscribe(
                topic, SubscribeOptions(group="g", prefetch=16, start_from="earliest")
            )
            batch = [envelope(n) for n in range(160)]
            await adapter.publish(topic, batch)
            seen = 0
            async for delivery in subscription:
                await delivery.ack()
                await asyncio.sleep(0)  # a handler that awaits: the reader runs meanwhile
                seen += 1
                if seen == len(batch):
                    break
            assert counts and min(counts) >= 4, counts
        finally:
            await adapter.client.delete(topic)
            await adapter.close()

    run(scenario)
