"""The memory adapter at the adapter level: groups, ordering, redelivery, replay, limits,
the fault hooks the conformance suite's reconnect cases use, and the broker's retention
bound (``max_messages``: the newest messages of each topic are kept, so a long-running
process does not grow without limit, while existing groups still get every message)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from eventbus import Envelope, InvalidURLError, MemoryAdapter, MessageTooLargeError, codec
from eventbus._memory_broker import DEFAULT_MAX_MESSAGES
from eventbus.adapter import Delivery, RawMessage, SubscribeOptions, Subscription
from eventbus.errors import BrokerConnectionError, ConnectionLostError, DeliveryAlreadySettledError

WAIT = 5.0
QUIET = 0.15  # how long "nothing more arrives" is watched for


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 20))


def fresh() -> tuple[MemoryAdapter, str]:
    """An adapter on a broker of its own and a topic name of its own."""
    return MemoryAdapter(f"memory://{uuid.uuid4()}"), f"topic-{uuid.uuid4()}"


def env(n: int | str, key: str | None = None) -> Envelope:
    return Envelope.create(
        type="t", source="s", data=f'{{"n":"{n}"}}'.encode(), partitionkey=key, subject=str(n)
    )


class Reader:
    """Pulls deliveries from one subscription with timeouts."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self._iter: AsyncIterator[Delivery] = subscription.__aiter__()

    async def next(self, timeout: float = WAIT) -> Delivery:
        return await asyncio.wait_for(self._iter.__anext__(), timeout)

    async def take(self, count: int) -> list[Delivery]:
        return [await self.next() for _ in range(count)]

    async def nothing_more(self) -> bool:
        """True if no delivery arrives within QUIET (the iterator stays usable)."""
        task = asyncio.ensure_future(self._iter.__anext__())
        done, _ = await asyncio.wait({task}, timeout=QUIET)
        if done:
            return False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        self._iter = self.subscription.__aiter__()
        return True


async def reader(adapter: MemoryAdapter, topic: str, group: str, **options: object) -> Reader:
    subscription = await adapter.subscribe(topic, SubscribeOptions(group=group, **options))  # type: ignore[arg-type]
    return Reader(subscription)


def subjects(deliveries: list[Delivery]) -> list[str | None]:
    return [d.envelope.subject if d.envelope else None for d in deliveries]


def test_capabilities_and_health() -> None:
    async def scenario() -> None:
        adapter, _ = fresh()
        caps = adapter.capabilities
        assert caps.persistent and caps.consumer_groups and caps.fanout and caps.replay
        assert caps.ordering == "per_key" and caps.redelivery and caps.native_delay
        assert not caps.native_dead_letter
        assert caps.max_message_bytes == 1024 * 1024
        await adapter.connect()
        assert (await adapter.health()).ok

    run(scenario)


def test_fan_out_every_group_gets_every_message() -> None:
    async def scenario() -> None:
        adapter, topic = fresh()
        billing = await reader(adapter, topic, "billing")
        shipping = await reader(adapter, topic, "shipping")
        await adapter.publish(topic, [env(1), env(2), env(3)])
        for group in (billing, shipping):
            got = await group.take(3)
            assert subjects(got) == ["1", "2", "3"]
            assert {d.group for d in got} == {got[0].group}
            assert all(d.topic == topic for d in got)
            for delivery in got:
                await delivery.ack()
        await adapter.close()

    run(scenario)


def test_competing_consumers_in_a_group_share_the_messages() -> None:
    async def scenario() -> None:
        adapter, topic = fresh()
        first = await reader(adapter, topic, "workers", prefetch=1)
        second = await reader(adapter, topic, "workers", prefetch=1)
        await adapter.publish(topic, [env(i) for i in range(6)])
        seen: list[str | None] = []
        for _ in range(3):
            a, b = await first.next(), await second.next()  # each holds one unacked
            seen += subjects([a, b])
            await a.ack()
            await b.ack()
        # Each message exactly once across the two consumers.
        assert sorted(seen, key=lambda s: int(s or -1)) == [str(i) for i in range(6)]
        assert await first.nothing_more() and await second.nothing_more()
        await adapter.close()

    run(scenario)


def test_prefetch_bounds_unsettled_deliveries() -> None:
    async def scenario() -> None:
        adapter, topic = fresh()
        consumer = await reader(adapter, topic, "g", prefetch=2)
        await adapter.publish(topic, [env(i) for i in range(4)])
        held = await consumer.take(2)
        assert await consumer.nothing_more()
        await held[0].ack()
        assert subjects([await consumer.next()]) == ["2"]
        await adapter.close()

    run(scenario)


def test_an_unacked_key_blocks_later_messages_with_that_key_only() -> None:
    async def scenario() -> None:
        adapter, topic = fresh()
        consumer = await reader(adapter, topic, "g", prefetch=10)
        await adapter.publish(
            topic,
            [
                env("a1", "a"),
                env("a2", "a"),
                env("b1", "b"),
                env("n1"),
                env("a3", "a"),
                env("b2", "b"),
            ],
        )
        first = await consumer.take(3)
        assert subjects(first) == ["a1", "b1", "n1"]
        assert await consumer.nothing_more()  # a2 and b2 wait for a1 and b1
        await first[1].ack()  # b1
        assert subjects([await consumer.next()]) == ["b2"]
        await first[0].ack()  # a1
        a2 = await consumer.next()
        assert subjects([a2]) == ["a2"]
        assert await consumer.nothing_more()  # a3 waits for a2
        await a2.ack()
        assert subjects([await consumer.next()]) == ["a3"]
        await adapter.close()

    run(scenario)


def test_hold_keys_false_hands_out_a_key_in_order_without_waiting() -> None:
    """Like a partitioned log: the second message of a key goes out while the first
    is unsettled, so only the consumer can keep the key in order."""

    async def scenario() -> None:
        adapter = MemoryAdapter(f"memory://{uuid.uuid4()}?hold_keys=false")
        topic = f"topic-{uuid.uuid4()}"
        consumer = await reader(adapter, topic, "g", prefetch=10)
        await adapter.publish(topic, [env("a1", "a"), env("a2", "a"), env("b1", "b")])
        assert subjects(await consumer.take(3)) == ["a1", "a2", "b1"]
        await adapter.close()

    run(scenario)


def test_nack_redelivers_after_the_delay_ahead_of_later_same_key_messages() -> None:
    async def scenario() -> None:
        adapter, topic = fresh()
        consumer = await reader(adapter, topic, "g")
        await adapter.publish(topic, [env("k1", "k"), env("k2", "k"), env("free")])
        k1 = await consumer.next()
        free = await consumer.next()
        assert subjects([k1, free]) == ["k1", "free"]
        await free.ack()
        nacked_at = time.monotonic()
        await k1.nack(0.2)
        again = await consumer.next()
        waited = time.monotonic() - nacked_at
        assert subjects([again]) == ["k1"] and again.attempt == 2
        assert waited >= 0.18, f"redelivered after {waited:.3f}s, before the 0.2s delay"
        assert again.envelope == k1.envelope and again.message_id == k1.message_id
        await again.nack()  # no delay: straight back
        third = await consumer.next()
        assert subjects([third]) == ["k1"] and third.attempt == 3
        await third.ack()
        assert subjects([await consumer.next()]) == ["k2"]
        await adapter.close()

    run(scenario)


def test_delayed_message_does_not_hold_up_other_keys() -> None:
    async def scenario() -> None:
        adapter, topic = fresh()
        consumer = await reader(adapter, topic, "g")
        await adapter.publish(topic, [env("slow")])
        slow = await consumer.next()
        await slow.nack(30)
        await adapter.publish(topic, [env("fast")])
        fast = await consumer.next(timeout=1.0)
        assert subjects([fast]) == ["fast"]
        await adapter.close()

    run(scenario)


def test_reject_drops_the_message() -> None:
    async def scenario() -> None:
        adapter, topic = fresh()
        consumer = await reader(adapter, topic, "g")
        await adapter.publish(topic, [env(1, "k"), env(2, "k")])
        first = await consumer.next()
        await first.reject()
        assert first.settled == "reject"
        assert subjects([await consumer.next()]) == ["2"]  # the key is free again
        assert await consumer.nothing_more()
        await adapter.close()

    run(scenario)


def test_settling_is_idempotent_and_exclusive() -> None:
    async def scenario() -> None:
        adapter, topic = fresh()
        consumer = await reader(adapter, topic, "g")
        await adapter.publish(topic, [env(1)])
        delivery = await consumer.next()
        assert delivery.settled is None
        await delivery.ack()
        await delivery.ack()
        with pytest.raises(DeliveryAlreadySettledError, match="already acked"):
            await delivery.nack()
        with pytest.raises(DeliveryAlreadySettledError):
            await delivery.reject()
        assert await consumer.nothing_more()  # acked once, never redelivered
        # The other way round: ack (its own fast path here) after a nack refuses too,
        # and does not settle the requeued message a second time.
        await adapter.publish(topic, [env(2)])
        second = await consumer.next()
        await second.nack()
        with pytest.raises(DeliveryAlreadySettledError, match="already nacked"):
            await second.ack()
        assert second.settled == "nack"
        again = await consumer.next()  # the nack stood: redelivered
        assert again.attempt == 2
        await again.ack()
        await adapter.close()

    run(scenario)


def test_start_from_earliest_replays_and_latest_does_not() -> None:
    async def scenario() -> None:
        adapter, topic = fresh()
        await adapter.publish(topic, [env(1), env(2)])
        latest = await reader(adapter, topic, "late")
        earliest = await reader(adapter, topic, "replay", start_from="earliest")
        await adapter.publish(topic, [env(3)])
        assert subjects(await earliest.take(3)) == ["1", "2", "3"]
        assert subjects([await latest.next()]) == ["3"]
        assert await latest.nothing_more()
        # An existing group keeps its position: start_from only applies when it is new.
        rejoin = await reader(adapter, topic, "late", start_from="earliest")
        assert await rejoin.nothing_more()
        await adapter.close()

    run(scenario)


def test_named_brokers_are_separate_and_share_by_name() -> None:
    async def scenario() -> None:
        name = f"memory://{uuid.uuid4()}"
        topic = f"topic-{uuid.uuid4()}"
        same, other = MemoryAdapter(name), MemoryAdapter(f"memory://{uuid.uuid4()}")
        on_same = await reader(same, topic, "g")
        on_other = await reader(other, topic, "g")
        await MemoryAdapter(name).publish(topic, [env(1)])
        assert subjects([await on_same.next()]) == ["1"]
        assert await on_other.nothing_more()
        assert MemoryAdapter("memory://").broker is MemoryAdapter("memory://default").broker
        await same.close()
        await other.close()

    run(scenario)


def test_max_message_bytes_from_the_url() -> None:
    async def scenario() -> None:
        _, topic = fresh()
        adapter = MemoryAdapter(f"memory://{uuid.uuid4()}?max_message_bytes=512")
        assert adapter.capabilities.max_message_bytes == 512
        consumer = await reader(adapter, topic, "g")
        fits = Envelope.create(type="t", source="s", data=b"x" * 100)
        big = Envelope.create(type="t", source="s", data=b"x" * 600)
        with pytest.raises(MessageTooLargeError, match="512-byte limit") as info:
            await adapter.publish(topic, [fits, big])
        assert big.id in str(info.value) and topic in str(info.value)
        assert await consumer.nothing_more()  # nothing of the batch was sent
        await adapter.publish(topic, [fits])
        assert (await consumer.next()).envelope == fits
        await adapter.close()

    run(scenario)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memory://x?max_message_bytes=big", "must be an integer"),
        ("memory://x?colour=blue", r"unknown option 'colour' in memory URL"),
        (
            "memory://x?colour=blue&max_message_bytes=1",
            "accepts only: encode, hold_keys, max_message_bytes",
        ),
        ("memory://x?mode=json", "mode='json' .* is invalid: use binary or structured"),
        ("memory://x?encode=no", "encode='no' .* use 'true' or 'false'"),
        ("memory://x?hold_keys=1", "hold_keys='1' .* use 'true' or 'false'"),
        ("memory://x?start_from=first", "start_from='first' .* use earliest or latest"),
        ("memory://x?mode=binary&mode=binary", "option 'mode' is given twice"),
        ("kafka://localhost:9092", "use memory://"),
    ],
)
def test_invalid_url_options(url: str, message: str) -> None:
    with pytest.raises(InvalidURLError, match=message):
        MemoryAdapter(url)


def test_raw_bytes_arrive_as_undecodable_deliveries() -> None:
    async def scenario() -> None:
        adapter, topic = fresh()
        consumer = await reader(adapter, topic, "g")
        await adapter.publish_raw(topic, RawMessage(b"\x00junk"))
        delivery = await consumer.next()
        assert delivery.envelope is None and delivery.raw == b"\x00junk"
        assert delivery.decode_error
        await delivery.ack()
        await adapter.close()

    run(scenario)


def test_close_returns_unsettled_deliveries_and_ends_iteration() -> None:
    async def scenario() -> None:
        adapter, topic = fresh()
        subscription = await adapter.subscribe(topic, SubscribeOptions(group="g"))
        await adapter.publish(topic, [env(1), env(2)])
        iterator = subscription.__aiter__()
        held = await asyncio.wait_for(iterator.__anext__(), WAIT)
        await subscription.close()
        await subscription.close()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(iterator.__anext__(), WAIT)
        await held.ack()  # settling after close is harmless; the message already went back
        replacement = await reader(adapter, topic, "g")
        got = await replacement.take(2)
        assert subjects(got) == ["1", "2"]
        assert [d.attempt for d in got] == [2, 1]
        await adapter.close()

    run(scenario)


def test_drop_connections_fails_iteration_and_requeues_in_order() -> None:
    async def scenario() -> None:
        adapter, topic = fresh()
        consumer = await reader(adapter, topic, "g")
        await adapter.publish(topic, [env(1, "k"), env(2, "k"), env(3)])
        held = await consumer.take(2)
        assert subjects(held) == ["1", "3"]
        await adapter.faults.drop_connections()
        with pytest.raises(ConnectionLostError, match="connection dropped"):
            await consumer.next()
        await held[0].ack()  # too late: it was already handed back
        again = await reader(adapter, topic, "g")
        got = await again.take(2)
        assert subjects(got) == ["1", "3"]
        assert [d.attempt for d in got] == [2, 2]
        await got[0].ack()  # frees key k for message 2
        last = await again.next()
        assert subjects([last]) == ["2"] and last.attempt == 1
        await adapter.close()

    run(scenario)


def test_refuse_connections_refuses_until_it_expires() -> None:
    async def scenario() -> None:
        adapter, topic = fresh()
        consumer = await reader(adapter, topic, "g")
        await adapter.faults.refuse_connections(0.3)
        with pytest.raises(ConnectionLostError):
            await consumer.next()
        for attempt in (
            adapter.connect(),
            adapter.publish(topic, [env(1)]),
            adapter.publish_raw(topic, RawMessage(b"x")),
            adapter.subscribe(topic, SubscribeOptions(group="g")),
        ):
            with pytest.raises(BrokerConnectionError, match="refusing connections"):
                await attempt

        async def until_accepted() -> Reader:
            while True:
                try:
                    return await reader(adapter, topic, "g")
                except BrokerConnectionError:
                    await asyncio.sleep(0.02)

        back = await asyncio.wait_for(until_accepted(), WAIT)
        await adapter.publish(topic, [env("after")])
        assert subjects([await back.next()]) == ["after"]
        await adapter.close()

    run(scenario)


# -- encoding: the memory broker carries bytes, as a real one does -----------------------


def rich_env() -> Envelope:
    return Envelope.create(
        type="t",
        source="s",
        data=b'{"a":1}',
        subject="sub",
        partitionkey="k",
        correlationid="c-1",
        extensions={"tenant": "acme"},
    )


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_messages_travel_encoded_and_arrive_as_equal_copies(mode: str) -> None:
    """A delivered envelope is decoded from bytes: equal to the published one, never
    the same object (the adapter used to hand out the published object itself)."""

    async def scenario() -> None:
        adapter = MemoryAdapter(f"memory://{uuid.uuid4()}?mode={mode}")
        topic = f"topic-{uuid.uuid4()}"
        consumer = await reader(adapter, topic, "g")
        sent = rich_env()
        await adapter.publish(topic, [sent])
        got = (await consumer.next()).envelope
        assert got == sent and got is not sent
        assert adapter.capabilities.headers is (mode == "binary")
        await adapter.close()

    run(scenario)


def test_a_codec_bug_fails_on_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Binary mode goes through ``codec.encode_binary``: an encoder that loses an
    attribute loses it on memory too, instead of being hidden until a real broker."""
    real = codec.encode_binary

    def lossy(envelope: Envelope, prefix: str = "ce_") -> tuple[dict[str, str], bytes]:
        headers, body = real(envelope, prefix)
        headers.pop(prefix + "subject", None)
        return headers, body

    monkeypatch.setattr(codec, "encode_binary", lossy)

    async def scenario() -> None:
        adapter, topic = fresh()
        consumer = await reader(adapter, topic, "g")
        await adapter.publish(topic, [rich_env()])
        got = (await consumer.next()).envelope
        assert got is not None and got.subject is None
        await adapter.close()

    run(scenario)


def test_structured_mode_uses_the_structured_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = codec.encode_structured

    def spy(envelope: Envelope) -> bytes:
        calls.append(envelope.id)
        return real(envelope)

    monkeypatch.setattr(codec, "encode_structured", spy)

    async def scenario() -> None:
        adapter = MemoryAdapter(f"memory://{uuid.uuid4()}?mode=structured")
        topic = f"topic-{uuid.uuid4()}"
        consumer = await reader(adapter, topic, "g")
        sent = rich_env()
        await adapter.publish(topic, [sent])
        assert (await consumer.next()).envelope == sent
        assert calls == [sent.id]
        await adapter.close()

    run(scenario)


def test_encode_false_passes_envelope_objects_through() -> None:
    """The benchmark switch: no codec, the very object published is handed out."""

    async def scenario() -> None:
        adapter = MemoryAdapter(f"memory://{uuid.uuid4()}?encode=false")
        topic = f"topic-{uuid.uuid4()}"
        consumer = await reader(adapter, topic, "g")
        sent = rich_env()
        await adapter.publish(topic, [sent])
        assert (await consumer.next()).envelope is sent
        await adapter.close()

    run(scenario)


def test_size_limit_applies_to_the_encoded_message() -> None:
    """Attributes count: a long correlation id pushes the encoded message over the
    limit although data and the envelope's own estimate are under it."""

    async def scenario() -> None:
        adapter = MemoryAdapter(f"memory://{uuid.uuid4()}?max_message_bytes=512")
        topic = f"topic-{uuid.uuid4()}"
        consumer = await reader(adapter, topic, "g")
        big = Envelope.create(type="t", source="s", data=b"x" * 50, correlationid="c" * 500)
        with pytest.raises(MessageTooLargeError, match="512-byte limit"):
            await adapter.publish(topic, [big])
        assert await consumer.nothing_more()
        await adapter.close()

    run(scenario)


def test_structured_size_counts_the_base64_of_binary_data() -> None:
    """300 binary bytes fit 512 as a binary-mode body but not as base64 in JSON."""

    async def scenario() -> None:
        data = bytes(range(150)) * 2
        sent = Envelope.create(
            type="t", source="s", data=data, datacontenttype="application/octet-stream"
        )
        for mode, fits in (("binary", True), ("structured", False)):
            adapter = MemoryAdapter(f"memory://{uuid.uuid4()}?max_message_bytes=512&mode={mode}")
            topic = f"topic-{uuid.uuid4()}"
            if fits:
                await adapter.publish(topic, [sent])
            else:
                with pytest.raises(MessageTooLargeError):
                    await adapter.publish(topic, [sent])

    run(scenario)


def test_raw_structured_cloudevent_decodes_in_structured_mode_only() -> None:
    """Raw bytes carry no headers: binary mode cannot read them, structured mode reads
    a structured CloudEvent document (as a headerless broker would)."""

    async def scenario() -> None:
        sent = rich_env()
        payload = codec.encode_structured(sent)
        for mode, readable in (("binary", False), ("structured", True)):
            adapter = MemoryAdapter(f"memory://{uuid.uuid4()}?mode={mode}")
            topic = f"topic-{uuid.uuid4()}"
            consumer = await reader(adapter, topic, "g")
            await adapter.publish_raw(topic, RawMessage(payload))
            delivery = await consumer.next()
            if readable:
                assert delivery.envelope == sent and delivery.decode_error is None
            else:
                assert delivery.envelope is None and delivery.raw == payload
                assert delivery.decode_error and "specversion" in delivery.decode_error
            await adapter.close()

    run(scenario)


# -- health ------------------------------------------------------------------------------


def test_health_reflects_the_connection_and_the_fault_hooks() -> None:
    """Not ok before connect, ok when connected, not ok while the broker refuses
    connections (saying so), ok again after, not ok once closed."""

    async def scenario() -> None:
        adapter, _ = fresh()
        report = await adapter.health()
        assert not report.ok and "never connected" in report.detail
        await adapter.connect()
        assert (await adapter.health()).ok
        await adapter.faults.refuse_connections(0.3)
        report = await adapter.health()
        assert not report.ok and "refuses connections" in report.detail
        await asyncio.sleep(adapter.faults.refusing_for())  # the refusal's own end
        assert (await adapter.health()).ok
        await adapter.close()
        report = await adapter.health()
        assert not report.ok and "closed" in report.detail

    run(scenario)


# -- the retention bound (max_messages) --------------------------------------------------


async def take(
    adapter: MemoryAdapter, topic: str, group: str, count: int, start_from: str = "latest"
) -> list[str | None]:
    subscription = await adapter.subscribe(
        topic, SubscribeOptions(group=group, prefetch=1000, start_from=start_from)
    )  # type: ignore[arg-type]
    seen: list[str | None] = []
    iterator = subscription.__aiter__()
    for _ in range(count):
        delivery = await asyncio.wait_for(iterator.__anext__(), WAIT)
        seen.append(delivery.envelope.subject if delivery.envelope else None)
        await delivery.ack()
    return seen


def test_the_log_keeps_the_newest_max_messages() -> None:
    async def scenario() -> None:
        adapter = MemoryAdapter(f"memory://{uuid.uuid4()}?max_messages=3")
        topic = f"topic-{uuid.uuid4()}"
        await adapter.publish(topic, [env(1), env(2)])
        await adapter.publish(topic, [env(3), env(4), env(5)])
        read = await adapter.read(topic)
        assert [r.envelope.subject for r in read if r.envelope] == ["3", "4", "5"]
        # A group created now replays only what is retained: the oldest two are gone.
        assert await take(adapter, topic, "late", 3, "earliest") == ["3", "4", "5"]
        await adapter.close()

    run(scenario)


def test_groups_that_exist_get_every_message_beyond_the_bound() -> None:
    async def scenario() -> None:
        adapter = MemoryAdapter(f"memory://{uuid.uuid4()}?max_messages=2")
        topic = f"topic-{uuid.uuid4()}"
        subscription = await adapter.subscribe(topic, SubscribeOptions(group="early"))
        await adapter.publish(topic, [env(n) for n in range(1, 6)])
        iterator = subscription.__aiter__()
        seen = []
        for _ in range(5):
            delivery = await asyncio.wait_for(iterator.__anext__(), WAIT)
            seen.append(delivery.envelope.subject if delivery.envelope else None)
            await delivery.ack()
        assert seen == ["1", "2", "3", "4", "5"]
        assert len(await adapter.read(topic)) == 2
        await adapter.close()

    run(scenario)


def test_the_bound_has_a_default_and_refuses_nonsense() -> None:
    adapter = MemoryAdapter(f"memory://{uuid.uuid4()}")
    assert adapter.broker.max_messages == DEFAULT_MAX_MESSAGES == 100_000
    for value in ("0", "-1", "many"):
        with pytest.raises(InvalidURLError, match=r"max_messages=.* positive integer"):
            MemoryAdapter(f"memory://x?max_messages={value}")
