"""The Kafka adapter against a real Kafka-protocol broker (Tansu unless told otherwise).

Adapter level: these tests drive ``publish``/``subscribe``/``Delivery`` directly and
observe the broker's behaviour through new subscriptions, never private state.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import pytest
from eventbus_kafka import KafkaAdapter

from eventbus.adapter import Delivery, RawMessage, SubscribeOptions, Subscription
from eventbus.envelope import Envelope
from eventbus.errors import BrokerConnectionError, MessageTooLargeError

pytestmark = [pytest.mark.broker("kafka"), pytest.mark.timeout(120)]


def run(scenario: Callable[[], Coroutine[Any, Any, None]], timeout: float = 90.0) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def with_options(url: str, **options: object) -> str:
    joiner = "&" if "?" in url else "?"
    return url + joiner + "&".join(f"{k}={v}" for k, v in options.items())


def ping(n: int, key: str | None = None, **attributes: Any) -> Envelope:
    return Envelope.create(
        type="test.ping", source="kafka-tests", data=b'{"n":%d}' % n, partitionkey=key, **attributes
    )


def number(delivery: Delivery) -> int:
    assert delivery.envelope is not None, delivery.decode_error
    return int(delivery.envelope.data.decode()[5:-1])


class Collector:
    """Iterates a subscription in the background; tests wait on what arrived."""

    def __init__(
        self,
        subscription: Subscription,
        on_delivery: Callable[[Delivery], Awaitable[None]] | None = None,
    ) -> None:
        self.subscription = subscription
        self.items: list[Delivery] = []
        self._changed = asyncio.Event()
        self._on_delivery = on_delivery
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for delivery in self.subscription:
            self.items.append(delivery)
            if self._on_delivery is not None:
                await self._on_delivery(delivery)
            self._changed.set()

    async def wait(
        self, predicate: Callable[[list[Delivery]], bool], what: str, timeout: float = 30.0
    ) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self.items):
            if self._task.done():
                self._task.result()
                raise AssertionError(f"subscription ended while waiting for {what}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {len(self.items)}")
            self._changed.clear()
            # Short slices: predicates may also look at other collectors' deliveries.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))
        return list(self.items)

    async def wait_count(self, n: int, timeout: float = 30.0) -> list[Delivery]:
        return await self.wait(lambda items: len(items) >= n, f"{n} deliveries", timeout)

    async def close(self) -> None:
        await self.subscription.close()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def ack_all(delivery: Delivery) -> None:
    await delivery.ack()


def test_round_trip_keeps_every_attribute(kafka_url: str) -> None:
    async def scenario() -> None:
        adapter = KafkaAdapter(kafka_url)
        await adapter.connect()
        topic, group = unique("rt"), unique("g")
        sent = Envelope.create(
            type="com.example.order.placed",
            source="https://example.com/orders",
            time=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
            data='{"order":"A-1","note":"café"}'.encode(),
            subject="order/A-1",
            dataschema="https://schemas.example.com/order/2",
            dataversion=2,
            correlationid="corr-1",
            causationid="cause-1",
            partitionkey="order-A-1",
            traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            tracestate="vendor=opaque",
            extensions={"tenant": "acme", "priority": "5"},
        )
        binary = Envelope.create(
            type="blob",
            source="s",
            data=bytes(range(256)),
            datacontenttype="application/octet-stream",
        )
        empty = Envelope.create(type="empty", source="s", data=b"", datacontenttype=None)
        collector = Collector(await adapter.subscribe(topic, SubscribeOptions(group=group)))
        await adapter.publish(topic, [sent, binary, empty])
        got = await collector.wait_count(3)
        by_id = {d.envelope.id: d for d in got if d.envelope is not None}
        assert by_id[sent.id].envelope == sent
        assert by_id[binary.id].envelope == binary
        assert by_id[empty.id].envelope == empty
        first = by_id[sent.id]
        assert (first.topic, first.group, first.attempt, first.raw) == (topic, group, 1, None)
        await asyncio.gather(*(d.ack() for d in got))
        await collector.close()
        await adapter.close()

    run(scenario)


def test_same_key_same_partition_in_order(kafka_url: str) -> None:
    async def scenario() -> None:
        adapter = KafkaAdapter(kafka_url)
        topic = unique("order")
        keys = ["alpha", "beta", "gamma", "delta"]
        collector = Collector(
            await adapter.subscribe(topic, SubscribeOptions(group=unique("g"), prefetch=200)),
            ack_all,
        )
        per_key = 15
        # Concurrent publishes of interleaved keys: they share producer batches.
        await asyncio.gather(
            *(
                adapter.publish(topic, [ping(k * per_key + i, key) for i in range(per_key)])
                for k, key in enumerate(keys)
            )
        )
        got = await collector.wait_count(len(keys) * per_key)
        for k, key in enumerate(keys):
            mine = [d for d in got if d.envelope is not None and d.envelope.partitionkey == key]
            assert [number(d) for d in mine] == [k * per_key + i for i in range(per_key)]
            partitions = {d.message_id.rsplit("/", 2)[1] for d in mine}
            assert len(partitions) == 1, f"{key} spread over partitions {partitions}"
        await collector.close()
        await adapter.close()

    run(scenario)


def test_commit_stops_at_first_unacked_offset(kafka_url: str) -> None:
    """Acks of offsets 0, 2, 3 but not 1: only offset 0 is committed, so the group's
    next consumer gets 1, 2, 3 again (never 0); once all are acked, nothing repeats."""

    async def scenario() -> None:
        adapter = KafkaAdapter(kafka_url)
        topic, group = unique("prefix"), unique("g")
        sent = [ping(i, "one-key") for i in range(4)]
        await adapter.publish(topic, sent)
        options = SubscribeOptions(group=group, start_from="earliest", prefetch=10)

        first = Collector(await adapter.subscribe(topic, options))
        got = await first.wait_count(4)
        assert [number(d) for d in got] == [0, 1, 2, 3]
        for d in (got[3], got[0], got[2]):  # out of order, and 1 never settled
            await d.ack()
        await first.close()

        second = Collector(await adapter.subscribe(topic, options))
        again = await second.wait_count(3)
        assert [number(d) for d in again] == [1, 2, 3]
        assert [d.envelope for d in again] == sent[1:]
        for d in again:
            await d.ack()
        await second.close()

        await adapter.publish(topic, [ping(99, "one-key")])
        third = Collector(await adapter.subscribe(topic, options))
        (only,) = await third.wait_count(1)
        assert number(only) == 99, "an acknowledged message came back"
        await only.ack()
        await third.close()
        await adapter.close()

    run(scenario)


def test_nack_with_delay_comes_back_later_without_blocking(kafka_url: str) -> None:
    async def scenario() -> None:
        adapter = KafkaAdapter(kafka_url)
        topic, group = unique("retry"), unique("g")
        delay = 1.5
        nacked_at: list[float] = []

        async def settle(delivery: Delivery) -> None:
            if number(delivery) == 0 and delivery.attempt == 1:
                nacked_at.append(time.monotonic())
                await delivery.nack(delay)
            else:
                await delivery.ack()

        collector = Collector(await adapter.subscribe(topic, SubscribeOptions(group=group)), settle)
        sent = [ping(i, "same-key") for i in range(3)]
        await adapter.publish(topic, sent)
        got = await collector.wait(
            lambda items: any(d.attempt == 2 for d in items), "the redelivery", timeout=20
        )
        arrived = time.monotonic()
        assert [(number(d), d.attempt) for d in got] == [(0, 1), (1, 1), (2, 1), (0, 2)], (
            "later messages of the partition were blocked by the nacked one"
        )
        retried = got[-1]
        assert retried.envelope == sent[0]
        assert retried.topic == topic and retried.group == group
        assert arrived - nacked_at[0] >= delay - 0.05, "redelivered before its delay"
        await collector.close()

        # The retry was acked: nothing comes back to the group's next consumer.
        await adapter.publish(topic, [ping(7, "same-key")])
        after = Collector(await adapter.subscribe(topic, SubscribeOptions(group=group)))
        (only,) = await after.wait_count(1)
        assert (number(only), only.attempt) == (7, 1)
        await only.ack()
        await after.close()
        await adapter.close()

    run(scenario)


def test_oversize_raises_and_sends_nothing(kafka_url: str) -> None:
    async def scenario() -> None:
        limit = 4096
        adapter = KafkaAdapter(with_options(kafka_url, max_message_bytes=limit))
        assert adapter.capabilities.max_message_bytes == limit
        topic, group = unique("big"), unique("g")
        collector = Collector(
            await adapter.subscribe(topic, SubscribeOptions(group=group)), ack_all
        )
        big = Envelope.create(type="big", source="s", data=b"x" * limit)
        with pytest.raises(MessageTooLargeError) as raised:
            await adapter.publish(topic, [ping(1), big, ping(2)])
        assert str(limit) in str(raised.value) and big.id in str(raised.value)
        await adapter.publish(topic, [ping(3)])
        (first,) = await collector.wait_count(1)
        assert number(first) == 3, "part of the refused batch was sent"
        await collector.close()
        await adapter.close()

    run(scenario)


def test_unreachable_bootstrap_fails_fast_with_masked_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends: nothing listens there

    async def scenario() -> None:
        url = f"kafka://svc:s3cr3t-pw@127.0.0.1:{port}?security_protocol=SASL_PLAINTEXT&connect_timeout=2"
        adapter = KafkaAdapter(url)
        started = time.monotonic()
        with pytest.raises(BrokerConnectionError) as raised:
            await adapter.connect()
        assert time.monotonic() - started < 5
        message = str(raised.value)
        assert "s3cr3t-pw" not in message and "svc:***@" in message
        assert f"127.0.0.1:{port}" in message
        report = await adapter.health()
        assert not report.ok and "s3cr3t-pw" not in report.detail
        await adapter.close()

    run(scenario, timeout=30)


def test_undecodable_record_is_a_delivery_not_a_crash(kafka_url: str) -> None:
    async def scenario() -> None:
        adapter = KafkaAdapter(kafka_url)
        topic = unique("poison")
        collector = Collector(
            await adapter.subscribe(topic, SubscribeOptions(group=unique("g"))), ack_all
        )
        await adapter.publish_raw(topic, RawMessage(b"\xffnot a cloudevent"))
        await adapter.publish(topic, [ping(1)])
        got = await collector.wait_count(2)
        poison = next(d for d in got if d.envelope is None)
        assert poison.raw == b"\xffnot a cloudevent"
        assert poison.decode_error and "specversion" in poison.decode_error
        assert any(d.envelope is not None and number(d) == 1 for d in got)
        await collector.close()
        await adapter.close()

    run(scenario)


def test_two_groups_each_get_everything(kafka_url: str) -> None:
    async def scenario() -> None:
        adapter = KafkaAdapter(kafka_url)
        topic = unique("fanout")
        a = Collector(await adapter.subscribe(topic, SubscribeOptions(group=unique("a"))), ack_all)
        b = Collector(await adapter.subscribe(topic, SubscribeOptions(group=unique("b"))), ack_all)
        count = 40
        await asyncio.gather(*(adapter.publish(topic, [ping(i, f"k{i}")]) for i in range(count)))
        for collector in (a, b):
            got = await collector.wait_count(count)
            assert sorted(number(d) for d in got) == list(range(count))
        await a.close()
        await b.close()
        await adapter.close()

    run(scenario)


def test_competing_consumers_split_partitions(kafka_url: str) -> None:
    async def scenario() -> None:
        adapter = KafkaAdapter(kafka_url)
        topic, group = unique("compete"), unique("g")
        first = Collector(await adapter.subscribe(topic, SubscribeOptions(group=group)), ack_all)
        second = Collector(await adapter.subscribe(topic, SubscribeOptions(group=group)), ack_all)
        count = 60
        await adapter.publish(topic, [ping(i, f"key-{i}") for i in range(count)])
        both = lambda _: len(first.items) + len(second.items) >= count  # noqa: E731
        await first.wait(both, f"{count} deliveries between both")
        seen = [number(d) for d in first.items + second.items]
        assert sorted(seen) == list(range(count)), "lost or duplicated across the group"
        assert first.items and second.items, "one consumer got every partition"
        await first.close()
        await second.close()
        await adapter.close()

    run(scenario)


def test_rebalance_mid_stream_loses_nothing(kafka_url: str) -> None:
    async def scenario() -> None:
        adapter = KafkaAdapter(kafka_url)
        topic, group = unique("rebalance"), unique("g")
        handled: list[int] = []

        async def slow_ack(delivery: Delivery) -> None:
            await asyncio.sleep(0.01)
            handled.append(number(delivery))
            await delivery.ack()

        options = SubscribeOptions(group=group, prefetch=8)
        first = Collector(await adapter.subscribe(topic, options), slow_ack)
        count = 120
        await adapter.publish(topic, [ping(i, f"key-{i}") for i in range(count // 2)])
        await first.wait(lambda _: len(handled) >= 10, "the first messages")
        second = Collector(await adapter.subscribe(topic, options), slow_ack)  # rebalance
        await adapter.publish(topic, [ping(i, f"key-{i}") for i in range(count // 2, count)])
        await first.wait(lambda _: set(handled) >= set(range(count)), "every message", timeout=60)
        await first.close()  # a second rebalance: the survivor takes every partition
        await adapter.publish(topic, [ping(1000, "after")])
        await second.wait(lambda _: 1000 in handled, "a message after the first left")
        await second.close()
        await adapter.close()

    run(scenario, timeout=110)


def test_start_from_latest_and_earliest(kafka_url: str) -> None:
    async def scenario() -> None:
        adapter = KafkaAdapter(kafka_url)
        topic = unique("start")
        await adapter.publish(topic, [ping(1)])
        latest = Collector(await adapter.subscribe(topic, SubscribeOptions(group=unique("l"))))
        earliest = Collector(
            await adapter.subscribe(
                topic, SubscribeOptions(group=unique("e"), start_from="earliest")
            )
        )
        await adapter.publish(topic, [ping(2)])
        assert [number(d) for d in await latest.wait_count(1)] == [2]
        # Unkeyed: 1 and 2 may sit on different partitions, so in either order.
        assert sorted(number(d) for d in await earliest.wait_count(2)) == [1, 2]
        await latest.close()
        await earliest.close()
        await adapter.close()

    run(scenario)


def test_health_answers(kafka_url: str) -> None:
    async def scenario() -> None:
        adapter = KafkaAdapter(kafka_url)
        await adapter.connect()
        report = await adapter.health()
        assert report.ok, report.detail
        await adapter.close()

    run(scenario)
