"""Handling: correlation and causation through ctx.publish/send, typed dispatch on a
topic, per-key order across lanes, and recovery after the connection drops."""

from __future__ import annotations

import asyncio
import json

from eventbus import Context, Envelope, Event, EventBus, MemoryAdapter
from tests.bus_support import (
    ChargeCard,
    Collector,
    OrderPlaced,
    PaymentTaken,
    memory_url,
    new_topic,
    order_inbox,
    run,
)


def test_context_publish_carries_correlation_and_causation() -> None:
    async def scenario() -> None:
        inbox: Collector[tuple[Envelope, Context]] = Collector()
        bus = EventBus(memory_url(), source="svc")

        @bus.subscribe(OrderPlaced, group="billing")
        async def charge(event: OrderPlaced, ctx: Context) -> None:
            assert ctx.event == event and ctx.topic == "test-bus-orders"
            assert ctx.group == "billing" and ctx.attempt == 1
            assert ctx.correlation_id == "flow-1"
            ctx.logger.info("charging %s", event.order_id)
            await ctx.publish(PaymentTaken(order_id=event.order_id))
            await bus.send(ChargeCard(order_id=event.order_id))  # via the contextvar

        @bus.subscribe(PaymentTaken, group="audit")
        async def paid(event: PaymentTaken, ctx: Context) -> None:
            inbox.add((ctx.envelope, ctx))
            await ctx.send(ChargeCard(order_id="from-payment"))

        @bus.subscribe(ChargeCard)
        async def charged(command: ChargeCard, ctx: Context) -> None:
            inbox.add((ctx.envelope, ctx))

        async with bus:
            origin = await bus.publish(OrderPlaced(order_id="o-7"), correlation_id="flow-1")
            seen = await inbox.wait_count(3)
        envelopes = {(e.type, json.loads(e.data)["order_id"]): e for e, _ in seen}
        payment = envelopes[("test.bus.payment-taken", "o-7")]
        direct = envelopes[("test.bus.charge-card", "o-7")]
        chained = envelopes[("test.bus.charge-card", "from-payment")]
        assert payment.correlationid == direct.correlationid == chained.correlationid == "flow-1"
        assert payment.causationid == origin.id and direct.causationid == origin.id
        assert chained.causationid == payment.id

    run(scenario)


def test_topic_subscription_gets_typed_events_and_acks_unhandled_known_types() -> None:
    async def scenario() -> None:
        url, topic = memory_url(), new_topic()
        bus = EventBus(url)
        typed = order_inbox(bus, OrderPlaced, group="typed")
        catch_all: Collector[Event] = Collector()

        @bus.subscribe(topic, group="all")
        async def everything(event: Event) -> None:
            catch_all.add(event)

        async with bus:
            # PaymentTaken is known but has no handler in "typed": acked, no dead letter.
            await bus.publish(PaymentTaken(order_id="p"), topic="test-bus-orders")
            await bus.publish(OrderPlaced(order_id="o"))
            await bus.publish(PaymentTaken(order_id="p2"), topic=topic)
            assert await typed.wait_count(1) == [OrderPlaced(order_id="o")]
            assert await catch_all.wait_count(1) == [PaymentTaken(order_id="p2")]
        assert "test-bus-orders.typed.dlq" not in MemoryAdapter(url).broker.topics

    run(scenario)


def test_concurrent_lanes_keep_per_key_order() -> None:
    async def scenario() -> None:
        topic = new_topic()
        seen: Collector[tuple[str, int]] = Collector()
        bus = EventBus(memory_url())

        @bus.subscribe(topic, group="g", concurrency=4)
        async def handle(event: OrderPlaced, ctx: Context) -> None:
            await asyncio.sleep(0)  # let lanes interleave
            key, seq = event.order_id.split(":")
            seen.add((key, int(seq)))

        async with bus:
            messages = [OrderPlaced(order_id=f"k{i % 3}:{i}") for i in range(30)]
            for message in messages:
                await bus.publish(message, topic=topic, key=message.order_id.split(":")[0])
            await bus.publish(OrderPlaced(order_id="nokey:99"), topic=topic)
            await seen.wait_count(31)
        for key in ("k0", "k1", "k2"):
            order = [seq for k, seq in seen.items if k == key]
            assert order == sorted(order) and len(order) == 10

    run(scenario)


def test_subscription_recovers_after_the_connection_drops() -> None:
    async def scenario() -> None:
        url, topic = memory_url(), new_topic()
        bus = EventBus(url)
        seen = order_inbox(bus, topic)
        async with bus:
            await bus.publish(OrderPlaced(order_id="before"), topic=topic)
            await seen.wait_count(1)
            await MemoryAdapter(url).faults.drop_connections()
            await bus.publish(OrderPlaced(order_id="after"), topic=topic)
            seen_ids = [event.order_id for event in await seen.wait_count(2)]
            assert seen_ids == ["before", "after"]

    run(scenario)
