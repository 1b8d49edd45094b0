"""When handlers fail: in-process retries, broker redelivery, dead letters, poison
messages, timeouts, at-most-once, dead letters off, idempotency (with the test kit
where it makes the test shorter)."""

from __future__ import annotations

import asyncio

from eventbus import (
    Context,
    Envelope,
    Event,
    EventBus,
    MemoryAdapter,
    MemoryIdempotencyStore,
    RetryPolicy,
)
from eventbus.adapter import RawMessage
from eventbus.testing import TestBus
from tests.bus_support import (
    Collector,
    OrderPlaced,
    PaymentTaken,
    dead_letters,
    memory_url,
    new_topic,
    run,
)


def test_retry_then_success_in_process() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url(), retry=RetryPolicy(initial_delay=0.001, in_process_attempts=3))

        @bus.subscribe(OrderPlaced, group="g")
        async def flaky(event: OrderPlaced, ctx: Context) -> None:
            if ctx.attempt < 3:
                raise RuntimeError("not yet")

        async with TestBus(bus, keep_retry_delays=True) as tb:
            await bus.publish(OrderPlaced(order_id="r"))
            await tb.drain()
        assert [(c.attempt, c.error is None) for c in tb.calls(flaky)] == [
            (1, False),
            (2, False),
            (3, True),
        ]
        assert tb.dead_lettered() == []

    run(scenario)


def test_failures_go_through_broker_redelivery_then_dead_letter() -> None:
    async def scenario() -> None:
        attempts: list[tuple[int, int]] = []
        policy = RetryPolicy(max_attempts=4, in_process_attempts=2, initial_delay=0.001)
        bus = EventBus(memory_url(), retry=policy)

        @bus.subscribe(OrderPlaced, group="g")
        async def broken(event: OrderPlaced, ctx: Context) -> None:
            attempts.append((ctx.delivery.attempt, ctx.attempt))
            raise ValueError("always broken")

        async with TestBus(bus, keep_retry_delays=True) as tb:
            sent = await bus.publish(OrderPlaced(order_id="d"))
            await tb.drain()
        assert attempts == [(1, 1), (1, 2), (2, 3), (2, 4)]
        (dead,) = tb.dead_lettered(broken)
        assert dead.envelope.id == sent.id and dead.envelope.data == sent.data
        assert (dead.attempts, dead.reason, dead.group) == (4, "ValueError: always broken", "g")

    run(scenario)


def test_poison_events_are_dead_lettered_at_once() -> None:
    async def scenario() -> None:
        url, topic = memory_url(), new_topic()
        calls: Collector[str] = Collector()
        bus = EventBus(url)

        @bus.subscribe(topic, group="g")
        async def handle(event: Event) -> None:
            calls.add(type(event).__name__)

        async with bus:
            adapter = MemoryAdapter(url)
            unknown = Envelope.create(type="test.bus.never-registered", source="x")
            invalid = Envelope.create(
                type="test.bus.order-placed", source="x", data=b'{"order_id": 5}'
            )
            await adapter.publish(topic, [unknown, invalid])
            await adapter.publish_raw(topic, RawMessage(b"\x00 definitely not a cloudevent"))
            dead = await dead_letters(url, topic, "g", 3)
        assert calls.items == []
        reasons = sorted(d.extensions["dlqreason"].split(":")[0] for d in dead)
        assert reasons == ["SchemaError", "SchemaError", "undecodable"]
        assert {d.extensions["dlqattempts"] for d in dead} == {"1"}
        raw = next(d for d in dead if d.type == "eventbus.undecodable")
        assert raw.data == b"\x00 definitely not a cloudevent"

    run(scenario)


def test_handler_timeout_is_a_failure_that_is_dead_lettered() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url(), retry=RetryPolicy(max_attempts=1))

        @bus.subscribe(OrderPlaced, group="g", timeout=0.05)
        async def hangs(event: OrderPlaced) -> None:
            await asyncio.Event().wait()

        async with TestBus(bus) as tb:
            await bus.publish(OrderPlaced(order_id="slow"))
            await tb.drain()
        (dead,) = tb.dead_lettered(hangs)
        assert dead.exception == "eventbus.errors.HandlerTimeoutError"

    run(scenario)


def test_at_most_once_does_not_retry_or_redeliver() -> None:
    async def scenario() -> None:
        url = memory_url()
        calls: Collector[int] = Collector()
        bus = EventBus(url, dead_letter=False)

        @bus.subscribe(OrderPlaced, group="g", delivery="at_most_once")
        async def once(event: OrderPlaced, ctx: Context) -> None:
            calls.add(ctx.delivery.attempt)
            assert ctx.delivery.settled == "ack"  # acked on receipt
            raise RuntimeError("lost by design")

        async with bus:
            await bus.publish(OrderPlaced(order_id="1"))
            await bus.publish(OrderPlaced(order_id="2"))
            assert await calls.wait_count(2) == [1, 1]
        assert "test-bus-orders.g.dlq" not in MemoryAdapter(url).broker.topics

    run(scenario)


def test_without_dead_letters_a_final_failure_is_nacked_for_later() -> None:
    async def scenario() -> None:
        calls: Collector[int] = Collector()
        bus = EventBus(memory_url(), dead_letter=False, retry=RetryPolicy(max_attempts=1))

        @bus.subscribe(OrderPlaced, group="g")
        async def broken(event: OrderPlaced, ctx: Context) -> None:
            calls.add(ctx.delivery.attempt)
            raise RuntimeError("keeps failing")

        async with bus:
            await bus.publish(OrderPlaced(order_id="n"))
            # Nothing is lost: the broker redelivers after the runner's back-off.
            assert (await calls.wait_count(2))[:2] == [1, 2]

    run(scenario)


def test_idempotency_skips_a_republished_duplicate() -> None:
    async def scenario() -> None:
        url = memory_url()
        calls: Collector[str] = Collector()
        marker: Collector[str] = Collector()
        bus = EventBus(url, idempotency=MemoryIdempotencyStore())

        @bus.subscribe(OrderPlaced, group="g")
        async def handle(event: OrderPlaced, ctx: Context) -> None:
            calls.add(ctx.envelope.id)

        @bus.subscribe(PaymentTaken, group="g")
        async def done(event: PaymentTaken) -> None:
            marker.add(event.order_id)

        async with bus:
            sent = await bus.publish(OrderPlaced(order_id="i"))
            await calls.wait_count(1)
            adapter = MemoryAdapter(url)
            await adapter.publish("test-bus-orders", [sent])  # the same event id again
            await adapter.publish("test-bus-orders", [sent.evolve(id="other-id")])
            await calls.wait_count(2)
            await bus.publish(PaymentTaken(order_id="end"))
            await marker.wait_count(1)
        assert calls.items == [sent.id, "other-id"]

    run(scenario)
