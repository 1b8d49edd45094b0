"""Redis adapter behaviour the conformance suite cannot express: settings errors, size
checks, partial failures, Streams specifics (delayed nack, reclaim, trimming, start
positions), Pub/Sub's limits, and close() with Redis unreachable."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from eventbus_redis import RedisPubSubAdapter, RedisSettings, RedisStreamsAdapter
from redis.asyncio import Redis

from eventbus.adapter import Delivery, RawMessage, SubscribeOptions, Subscription
from eventbus.envelope import Envelope
from eventbus.errors import BatchPublishError, InvalidURLError, MessageTooLargeError
from eventbus.registry_adapters import adapter_from_url
from eventbus.testing.faultproxy import FaultProxy


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def envelope(n: int, data: bytes | None = None) -> Envelope:
    return Envelope(
        id=uuid.uuid4().hex,
        type="test.redis",
        source="tests",
        time=datetime.datetime.now(datetime.UTC),
        data=data if data is not None else str(n).encode(),
    )


def name(kind: str) -> str:
    return f"test-redis-{kind}-{uuid.uuid4().hex[:8]}"


async def next_delivery(subscription: Subscription, timeout: float = 10.0) -> Delivery:
    iterator: Any = subscription.__aiter__()
    return await asyncio.wait_for(iterator.__anext__(), timeout)


# -- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis+streams://h/0?bogus=1", ["bogus", "accepts only"]),
        ("redis://h/0?maxlen=5", ["maxlen", "Streams"]),
        ("redis+streams://h/0?sharded=true", ["sharded", "Pub/Sub"]),
        ("redis+streams://h/0?maxlen=-1", ["maxlen", ">= 0"]),
        ("redis+streams://h/0?block=soon", ["block", "seconds"]),
        ("redis://h/0?sharded=maybe", ["sharded", "'true' or 'false'"]),
        ("redis://h/0?tls_ca=/ca.pem", ["tls_ca", "rediss://"]),
        ("rediss://h/0?tls_verify=sometimes", ["tls_verify", "true or false"]),
        ("redis+streams://h/abc", ["database", "number"]),
        ("redis+streams://h/0?start_from=middle", ["start_from", "earliest"]),
        ("redis://h/0?connect_timeout=nan", ["connect_timeout", ">= 0.1"]),
        ("redis://h/0?ping_interval=0", ["ping_interval", ">= 0.1"]),
        ("redis+streams://h/0?ping_timeout=1", ["ping_timeout", "Pub/Sub"]),
    ],
)
def test_bad_settings_fail_with_one_line_naming_the_option(url: str, words: list[str]) -> None:
    with pytest.raises(InvalidURLError) as caught:
        adapter_from_url(url)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_a_blank_option_is_no_option_and_the_last_value_counts() -> None:
    settings = RedisSettings.from_url("redis+streams://h/0?maxlen=&block=x&block=0.05")
    assert (settings.maxlen, settings.block) == (1_000_000, 0.05)


@pytest.mark.parametrize(
    ("url", "bound"),
    [
        ("redis://h/0", 10.0),  # ping_interval + ping_timeout
        ("redis://h/0?ping_interval=1&ping_timeout=0.5", 5.0),  # never under connect_timeout
        ("redis://h/0?ping_interval=1&ping_timeout=0.5&connect_timeout=1", 1.5),
        ("redis://h/0?ping_interval=inf", None),  # no ping: nothing noticed
        ("redis+streams://h/0", 10.0),  # read_timeout: socket_timeout
        ("redis+streams://h/0?block=0.2&socket_timeout=1", 5.2),  # block + 5 s
    ],
)
def test_half_open_bound_follows_the_settings(url: str, bound: float | None) -> None:
    assert adapter_from_url(url).capabilities.half_open_bound == pytest.approx(bound)


def test_schemes_pick_the_mode_and_the_password_is_masked() -> None:
    assert isinstance(adapter_from_url("redis://h:1/0"), RedisPubSubAdapter)
    assert isinstance(adapter_from_url("rediss://h:1/0"), RedisPubSubAdapter)
    assert isinstance(adapter_from_url("redis+streams://h:1/0"), RedisStreamsAdapter)
    adapter = adapter_from_url("rediss+streams://u:secret@h:1/0")
    assert isinstance(adapter, RedisStreamsAdapter)
    assert adapter.settings.tls and "secret" not in adapter.settings.masked_url


def test_settings_repr_and_a_locals_capturing_traceback_never_show_the_password() -> None:
    """#18 defect 12: error reporters that capture frame locals print the settings."""
    import traceback

    url = "redis+streams://app:Sup3rS3cret@127.0.0.1:1/0?connect_timeout=0.5"
    settings = RedisSettings.from_url(url)
    assert "Sup3rS3cret" not in repr(settings)
    assert "127.0.0.1" in repr(settings) and settings.password == "Sup3rS3cret"

    async def connect(adapter: RedisStreamsAdapter) -> str:
        # The URL is no local of this frame (a caller's own variables are its business).
        try:
            await adapter.connect()
        except Exception as exc:
            return "".join(
                traceback.TracebackException.from_exception(exc, capture_locals=True).format()
            )
        finally:
            await adapter.close()
        raise AssertionError("connected to a closed port")

    report = asyncio.run(connect(RedisStreamsAdapter(url)))
    assert "BrokerConnectionError" in report and "Sup3rS3cret" not in report


def test_connect_fails_fast_with_the_masked_url() -> None:
    async def scenario() -> None:
        adapter = RedisStreamsAdapter("redis+streams://u:secret@127.0.0.1:1/0?connect_timeout=1")
        started = time.monotonic()
        with pytest.raises(Exception) as caught:
            await adapter.connect()
        assert time.monotonic() - started < 5
        assert "secret" not in str(caught.value) and "127.0.0.1:1" in str(caught.value)
        await adapter.close()

    run(scenario)


# -- publishing --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["pubsub", "streams"])
def test_oversize_is_refused_before_anything_is_sent(mode: str, redis_url: str) -> None:
    async def scenario() -> None:
        base = redis_url if mode == "pubsub" else redis_url.replace("redis", "redis+streams", 1)
        adapter = adapter_from_url(f"{base}?max_message_bytes=1000")
        await adapter.connect()
        topic = name("big")
        try:
            with pytest.raises(MessageTooLargeError, match="1000-byte limit"):
                await adapter.publish(topic, [envelope(0), envelope(1, b"x" * 2000)])
            assert not await Redis.from_url(redis_url).exists(topic)
        finally:
            await adapter.close()

    run(scenario)


def test_a_failing_publish_names_its_indexes_and_spares_concurrent_ones(
    streams_url: str, redis_url: str
) -> None:
    async def scenario() -> None:
        adapter = RedisStreamsAdapter(streams_url)
        await adapter.connect()
        broken, fine = name("wrongtype"), name("fine")
        raw = Redis.from_url(redis_url)
        await raw.set(broken, "not a stream")  # every XADD to it fails with WRONGTYPE
        try:
            results = await asyncio.gather(
                adapter.publish(broken, [envelope(0), envelope(1)]),
                adapter.publish(fine, [envelope(2), envelope(3)]),
                return_exceptions=True,
            )
            assert isinstance(results[0], BatchPublishError)
            assert sorted(results[0].failures) == [0, 1]
            assert results[1] is None
            assert await raw.xlen(fine) == 2
        finally:
            await raw.delete(broken, fine)
            await raw.aclose()
            await adapter.close()

    run(scenario)


def test_streams_are_trimmed_to_about_maxlen(streams_url: str, redis_url: str) -> None:
    async def scenario() -> None:
        adapter = RedisStreamsAdapter(f"{streams_url}?maxlen=100")
        await adapter.connect()
        topic = name("trim")
        raw = Redis.from_url(redis_url)
        try:
            for start in range(0, 2000, 200):
                await adapter.publish(topic, [envelope(i) for i in range(start, start + 200)])
            assert 100 <= await raw.xlen(topic) < 400  # approximate: whole macro nodes
        finally:
            await raw.delete(topic)
            await raw.aclose()
            await adapter.close()

    run(scenario)


# -- Streams consuming ----------------------------------------------------------------------


def test_nack_with_delay_does_not_hold_back_other_messages(streams_url: str) -> None:
    async def scenario() -> None:
        adapter = RedisStreamsAdapter(streams_url)
        await adapter.connect()
        topic = name("delay")
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group="g"))
            await adapter.publish(topic, [envelope(0)])
            first = await next_delivery(subscription)
            nacked_at = time.monotonic()
            await first.nack(delay=1.5)
            await adapter.publish(topic, [envelope(1)])
            second = await next_delivery(subscription)
            assert second.envelope is not None and second.envelope.data == b"1"
            assert time.monotonic() - nacked_at < 1.0, "the delayed nack held the next one"
            await second.ack()
            again = await next_delivery(subscription)
            assert again.envelope is not None and again.envelope.data == b"0"
            assert time.monotonic() - nacked_at >= 1.5
            assert again.attempt == 2  # the delivery count from XPENDING
            await again.ack()
        finally:
            await adapter.close()

    run(scenario)


def test_a_dead_consumers_entries_are_reclaimed_after_the_idle_time(
    streams_url: str, redis_url: str
) -> None:
    async def scenario() -> None:
        topic = name("reclaim")
        raw = Redis.from_url(redis_url)
        adapter = RedisStreamsAdapter(f"{streams_url}?claim_idle=0.5&claim_interval=0.1")
        await adapter.connect()
        try:
            await raw.xgroup_create(topic, "g", id="0", mkstream=True)
            await adapter.publish(topic, [envelope(0)])
            # A consumer that reads the entry and dies without acknowledging it.
            taken = await raw.xreadgroup("g", "dead-consumer", {topic: ">"}, count=1)
            assert taken and taken[0][1]
            started = time.monotonic()
            subscription = await adapter.subscribe(topic, SubscribeOptions(group="g"))
            delivery = await next_delivery(subscription)
            assert delivery.envelope is not None and delivery.envelope.data == b"0"
            assert delivery.attempt == 2
            assert time.monotonic() - started >= 0.3
            await delivery.ack()
        finally:
            await raw.delete(topic)
            await raw.aclose()
            await adapter.close()

    run(scenario)


@pytest.mark.parametrize(("start_from", "expected"), [("earliest", b"old"), ("latest", b"new")])
def test_a_new_group_starts_from_earliest_or_latest(
    start_from: str, expected: bytes, streams_url: str
) -> None:
    async def scenario() -> None:
        adapter = RedisStreamsAdapter(streams_url)
        await adapter.connect()
        topic = name("start")
        try:
            await adapter.publish(topic, [envelope(0, b"old")])
            subscription = await adapter.subscribe(
                topic, SubscribeOptions(group="g", start_from=start_from)
            )  # type: ignore[arg-type]
            await adapter.publish(topic, [envelope(1, b"new")])
            delivery = await next_delivery(subscription)
            assert delivery.envelope is not None and delivery.envelope.data == expected
        finally:
            await adapter.close()

    run(scenario)


def test_prefetch_bounds_the_deliveries_handed_out(streams_url: str) -> None:
    async def scenario() -> None:
        adapter = RedisStreamsAdapter(streams_url)
        await adapter.connect()
        topic = name("prefetch")
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group="g", prefetch=3))
            await adapter.publish(topic, [envelope(i) for i in range(10)])
            held = [await next_delivery(subscription) for _ in range(3)]
            with pytest.raises(TimeoutError):
                await next_delivery(subscription, timeout=0.5)
            await held[0].ack()
            assert (await next_delivery(subscription)).envelope is not None
        finally:
            await adapter.close()

    run(scenario)


@pytest.mark.parametrize("mode", ["pubsub", "streams"])
def test_close_reaches_the_end_when_redis_is_unreachable(mode: str, redis_url: str) -> None:
    async def scenario() -> None:
        port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        proxy = FaultProxy("127.0.0.1", port).start()
        scheme = "redis" if mode == "pubsub" else "redis+streams"
        adapter = adapter_from_url(f"{scheme}://127.0.0.1:{proxy.port}/0")
        try:
            await adapter.connect()
            subscription = await adapter.subscribe(name("close"), SubscribeOptions(group="g"))
            pump = asyncio.create_task(next_delivery(subscription, timeout=30))
            await asyncio.sleep(0.2)
        finally:
            proxy.stop()  # Redis is now unreachable
        started = time.monotonic()
        await asyncio.wait_for(adapter.close(), 25)
        assert time.monotonic() - started < 25
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)

    run(scenario)


# -- Pub/Sub ----------------------------------------------------------------------------------


def test_pubsub_subscribers_come_back_after_the_connection_drops(redis_url: str) -> None:
    """Pub/Sub loses what is published while it reconnects (so the conformance
    reconnect cases are limits for it), but the subscription itself comes back."""

    async def scenario() -> None:
        from eventbus import EventBus
        from eventbus.testing.conformance import Ping, on_topic

        port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
        proxy = FaultProxy("127.0.0.1", port).start()
        url = f"redis://127.0.0.1:{proxy.port}/0"
        event_cls = on_topic(Ping, name("back"))
        got: asyncio.Queue[int] = asyncio.Queue()
        consumer = EventBus.from_url(url, source="tests")

        @consumer.subscribe(event_cls, group="g")
        async def handle(event: Ping) -> None:
            got.put_nowait(event.seq)

        publisher = EventBus.from_url(url, source="tests")
        try:
            await consumer.start()
            await publisher.start()
            await publisher.publish(event_cls(seq=0))
            assert await asyncio.wait_for(got.get(), 10) == 0
            await proxy.drop_connections()
            for seq in range(1, 200):  # until the resubscribed consumer hears one
                await publisher.publish(event_cls(seq=seq))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(got.get(), 0.1)
                    return
            raise AssertionError("the Pub/Sub subscriber never came back after the drop")
        finally:
            await consumer.stop()
            await publisher.stop()
            proxy.stop()

    run(scenario)


def test_concurrent_publishes_share_one_round_trip() -> None:
    from eventbus_redis.publish import pipeline_batcher

    class Pipe:
        def __init__(self) -> None:
            self.commands: list[str] = []

        def echo(self, value: str) -> None:
            self.commands.append(value)

        async def execute(self, raise_on_error: bool = True) -> list[Any]:
            pipes.append(self)
            return list(self.commands)

    class Client:
        def pipeline(self, transaction: bool = True) -> Pipe:
            return Pipe()

    pipes: list[Pipe] = []

    async def scenario() -> None:
        batcher = pipeline_batcher(Client())  # type: ignore[arg-type]
        replies = await asyncio.gather(
            *(
                batcher.submit([lambda p, i=i: p.echo(f"a{i}"), lambda p, i=i: p.echo(f"b{i}")])
                for i in range(5)
            )
        )
        assert replies == [[f"a{i}", f"b{i}"] for i in range(5)]
        assert len(pipes) == 1

    run(scenario)


def test_sharded_pubsub_publishes_and_receives(redis_url: str) -> None:
    """``?sharded=true`` uses SPUBLISH/SSUBSCRIBE (Redis 7+, needed on a cluster)."""

    async def scenario() -> None:
        adapter = RedisPubSubAdapter(f"{redis_url}?sharded=true")
        await adapter.connect()
        topic = name("sharded")
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group="g"))
            await adapter.publish(topic, [envelope(7)])
            delivery = await next_delivery(subscription)
            assert delivery.envelope is not None and delivery.envelope.data == b"7"
        finally:
            await adapter.close()

    run(scenario)


# -- settling, handing back, transport details, interop -------------------------------------


def test_acks_are_confirmed_by_close_and_unsettled_entries_come_back_at_once(
    streams_url: str, redis_url: str
) -> None:
    async def scenario() -> None:
        topic = name("handback")
        raw = Redis.from_url(redis_url)
        first = RedisStreamsAdapter(streams_url)  # claim_idle 30 s: no early reclaim
        second = RedisStreamsAdapter(streams_url)
        await first.connect()
        await second.connect()
        try:
            subscription = await first.subscribe(topic, SubscribeOptions(group="g"))
            await first.publish(topic, [envelope(0), envelope(1)])
            done, unsettled = await next_delivery(subscription), await next_delivery(subscription)
            await done.ack()
            await subscription.close()
            pending = await raw.xpending_range(topic, "g", "-", "+", 10)
            assert [p["message_id"].decode() for p in pending] == [
                unsettled.message_id.split("/", 1)[1]
            ]
            started = time.monotonic()
            taker = await second.subscribe(topic, SubscribeOptions(group="g"))
            again = await next_delivery(taker)
            assert again.envelope is not None and unsettled.envelope is not None
            assert again.envelope.id == unsettled.envelope.id and again.attempt == 2
            assert time.monotonic() - started < 5, "waited for claim_idle instead"
        finally:
            await raw.delete(topic)
            await raw.aclose()
            await first.close()
            await second.close()

    run(scenario)


def test_entries_fetched_ahead_and_given_back_unread_are_not_attempts(
    streams_url: str, redis_url: str
) -> None:
    """Subscriptions of fresh adapters (as of buses stopping one after another) each
    fetch an entry ahead, into their buffer, and close without handing it out: its
    delivery count grows with each, yet the next delivery is still attempt 1."""

    async def scenario() -> None:
        topic, rounds = name("unread"), 4
        raw = Redis.from_url(redis_url)
        options = SubscribeOptions(group="g", start_from="earliest")

        async def delivered() -> int:
            pending = await raw.xpending_range(topic, "g", "-", "+", 1)
            return int(pending[0]["times_delivered"]) if pending else 0

        try:
            for round_ in range(1, rounds + 1):
                adapter = RedisStreamsAdapter(streams_url)
                await adapter.connect()
                try:
                    subscription = await adapter.subscribe(topic, options)
                    if round_ == 1:
                        await adapter.publish(topic, [envelope(0)])
                    deadline = time.monotonic() + 10
                    while await delivered() < round_:  # fetched ahead, never iterated
                        assert time.monotonic() < deadline, f"round {round_}: not fetched"
                        await asyncio.sleep(0.02)
                    await subscription.close()
                finally:
                    await adapter.close()
            last = RedisStreamsAdapter(streams_url)
            await last.connect()
            try:
                delivery = await next_delivery(await last.subscribe(topic, options))
                assert await delivered() == rounds + 1  # Redis counted every fetch
                assert delivery.attempt == 1, (
                    f"attempt {delivery.attempt} after {rounds} subscriptions gave the "
                    "entry back unread: their fetches were counted as runs"
                )
                await delivery.ack()
            finally:
                await last.close()
        finally:
            await raw.delete(topic)
            await raw.aclose()

    run(scenario)


def test_entries_the_bus_never_took_are_given_back_unread(streams_url: str, redis_url: str) -> None:
    """The subscription the bus iterates merges the topic with the group's route
    (``WithGroupRoute``), pumping entries ahead of the bus. Closed with one taken by the
    bus and one still pumped, not taken: the next consumer sees the one taken on its
    second attempt, the other on its first."""

    async def scenario() -> None:
        topic = name("pumped")
        raw = Redis.from_url(redis_url)
        options = SubscribeOptions(group="g", start_from="earliest")

        async def delivered() -> dict[str, int]:
            pending = await raw.xpending_range(topic, "g", "-", "+", 10)
            return {p["message_id"].decode(): int(p["times_delivered"]) for p in pending}

        try:
            adapter = RedisStreamsAdapter(streams_url)
            await adapter.connect()
            try:
                subscription = await adapter.subscribe(topic, options)
                await adapter.publish(topic, [envelope(0), envelope(1)])
                iterator = subscription.__aiter__()
                taken = await asyncio.wait_for(anext(iterator), 10)
                deadline = time.monotonic() + 10
                while len(await delivered()) < 2:  # the second fetched too
                    assert time.monotonic() < deadline, "the second entry was not fetched"
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.2)  # and pumped past the adapter
                await subscription.close()
            finally:
                await adapter.close()
            last = RedisStreamsAdapter(streams_url)
            await last.connect()
            try:
                again = await last.subscribe(topic, options)
                attempts = {}
                for _ in range(2):
                    delivery = await next_delivery(again)
                    assert delivery.envelope is not None
                    attempts[delivery.envelope.id] = delivery.attempt
                    await delivery.ack()
                await again.close()
            finally:
                await last.close()
            assert taken.envelope is not None
            other = next(i for i in attempts if i != taken.envelope.id)
            assert attempts[taken.envelope.id] == 2, "the entry the bus took may have run"
            assert attempts[other] == 1, (
                f"attempt {attempts[other]} for an entry the bus never took: its fetch "
                "was counted as a run"
            )
        finally:
            await raw.delete(topic)
            await raw.aclose()

    run(scenario)


def test_an_unknown_or_non_utf8_field_does_not_make_a_valid_event_poison(
    streams_url: str, redis_url: str
) -> None:
    async def scenario() -> None:
        from eventbus_redis.codec import encode_fields

        topic = name("extra-field")
        raw = Redis.from_url(redis_url)
        adapter = RedisStreamsAdapter(streams_url)
        await adapter.connect()
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group="g"))
            sent = envelope(5)
            fields: dict[Any, Any] = dict(encode_fields(sent)[0])
            fields[b"\xff\xfe-trace"] = b"\x00\x01"
            fields["x-unknown"] = "whatever"
            await raw.xadd(topic, fields)
            delivery = await next_delivery(subscription)
            assert delivery.decode_error is None
            assert delivery.envelope is not None and delivery.envelope.id == sent.id
        finally:
            await raw.delete(topic)
            await raw.aclose()
            await adapter.close()

    run(scenario)


def test_pubsub_reads_a_structured_event_written_by_the_cloudevents_sdk(redis_url: str) -> None:
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent

    async def scenario() -> None:
        adapter = RedisPubSubAdapter(redis_url)
        await adapter.connect()
        topic = name("sdk")
        event = CloudEvent(
            attributes={
                "id": "sdk-1",
                "type": "com.example.sdk",
                "source": "/sdk",
                "specversion": "1.0",
                "datacontenttype": "application/json",
                "subject": "s1",
                "time": datetime.datetime.now(datetime.UTC),
            },
            data={"a": 1},
        )
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group="g"))
            await adapter.publish_raw(topic, RawMessage(JSONFormat().write(event)))
            delivery = await next_delivery(subscription)
            assert delivery.envelope is not None, delivery.decode_error
            assert (delivery.envelope.id, delivery.envelope.type, delivery.envelope.subject) == (
                "sdk-1",
                "com.example.sdk",
                "s1",
            )
            assert delivery.envelope.data == b'{"a":1}'
        finally:
            await adapter.close()

    run(scenario)


@pytest.mark.parametrize(
    "args",
    [
        ("XADD", "t", "MAXLEN", "~", 1000, "*", "ce_id", "é", "body", b"\x00\xff"),
        ("XGROUP CREATE", "t", "g", "$", "MKSTREAM"),
        (b"CLIENT SETNAME", "eventbus"),
        ("ZADD", "k", 1.5, "m"),  # a float: redis-py's own packer
        ("SET", "k", memoryview(b"v")),
    ],
)
def test_the_fast_packer_writes_what_redis_py_writes(args: tuple[Any, ...]) -> None:
    from eventbus_redis.connection import FastConnection
    from redis.asyncio.connection import Connection

    assert b"".join(FastConnection().pack_command(*args)) == b"".join(
        Connection().pack_command(*args)
    )


def test_deliveries_of_a_closed_subscription_are_stale(streams_url: str) -> None:
    """Its entries went back to the group at close, so a delivery not yet started must
    not run here (the bus checks ``Delivery.stale`` before running one)."""

    async def scenario() -> None:
        adapter = RedisStreamsAdapter(streams_url)
        await adapter.connect()
        topic = name("stale")
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group="g"))
            await adapter.publish(topic, [envelope(0)])
            delivery = await next_delivery(subscription)
            assert not getattr(delivery, "stale", False)
            await subscription.close()
            assert getattr(delivery, "stale", False)
        finally:
            await adapter.close()

    run(scenario)
