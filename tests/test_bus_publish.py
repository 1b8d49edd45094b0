"""Publishing: the confirmed envelope, other topics, commands, batches and their partial
failures, size limits, and waiting out a broker that refuses connections."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from eventbus import (
    BatchPublishError,
    BrokerConnectionError,
    ConfigurationError,
    Envelope,
    EventBus,
    MemoryAdapter,
    MessageTooLargeError,
    PublishError,
)
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


def test_publish_returns_the_confirmed_envelope() -> None:
    async def scenario() -> None:
        url = memory_url()
        inbox: Collector[Envelope] = Collector()
        consumer = EventBus(url, source="consumer")

        @consumer.subscribe("test-bus-orders", group="raw")
        async def keep(envelope: Envelope) -> None:
            inbox.add(envelope)

        async with consumer, EventBus(url, source="orders-svc") as producer:
            sent = await producer.publish(
                OrderPlaced(order_id="o-1"),
                key="o-1",
                subject="orders/o-1",
                extensions={"tenant": "acme"},
            )
            (got,) = await inbox.wait_count(1)
        assert got == sent
        assert sent.type == "test.bus.order-placed" and sent.source == "orders-svc"
        assert sent.correlationid == sent.id and sent.causationid is None
        assert sent.partitionkey == "o-1" and sent.subject == "orders/o-1"
        assert sent.extensions == {"tenant": "acme"}
        assert json.loads(sent.data) == {"order_id": "o-1"}
        assert sent.dataversion == 1

    run(scenario)


def test_publish_to_another_topic_and_explicit_correlation() -> None:
    async def scenario() -> None:
        url, topic = memory_url(), new_topic()
        bus = EventBus(url)
        inbox = order_inbox(bus, topic)
        async with bus:
            sent = await bus.publish(
                OrderPlaced(order_id="o-2"), topic=topic, correlation_id="flow-9"
            )
            assert await inbox.wait_count(1) == [OrderPlaced(order_id="o-2")]
        assert sent.correlationid == "flow-9"

    run(scenario)


def test_send_delivers_a_command_to_its_one_group_and_refuses_events() -> None:
    async def scenario() -> None:
        inbox: Collector[ChargeCard] = Collector()
        bus = EventBus(memory_url())

        @bus.subscribe(ChargeCard)
        async def charge(command: ChargeCard) -> None:
            inbox.add(command)

        async with bus:
            await bus.send(ChargeCard(order_id="o-3"))
            assert await inbox.wait_count(1) == [ChargeCard(order_id="o-3")]
            with pytest.raises(ConfigurationError, match="takes a Command"):
                await bus.send(OrderPlaced(order_id="o-3"))  # type: ignore[arg-type]

    run(scenario)


def test_publish_many_spreads_over_topics_in_order() -> None:
    async def scenario() -> None:
        orders: Collector[str] = Collector()
        payments: Collector[str] = Collector()
        bus = EventBus(memory_url())

        @bus.subscribe(OrderPlaced, group="g")
        async def on_order(event: OrderPlaced) -> None:
            orders.add(event.order_id)

        @bus.subscribe(PaymentTaken, group="g")
        async def on_payment(event: PaymentTaken) -> None:
            payments.add(event.order_id)

        async with bus:
            envelopes = await bus.publish_many(
                [
                    OrderPlaced(order_id="1"),
                    PaymentTaken(order_id="1"),
                    OrderPlaced(order_id="2"),
                    OrderPlaced(order_id="3"),
                ]
            )
            assert await orders.wait_count(3) == ["1", "2", "3"]
            assert await payments.wait_count(1) == ["1"]
        assert len({e.id for e in envelopes}) == 4
        assert [e.type for e in envelopes] == [
            "test.bus.order-placed",
            "test.bus.payment-taken",
            "test.bus.order-placed",
            "test.bus.order-placed",
        ]

    run(scenario)


def test_publish_many_partial_failure_names_the_failed_indexes() -> None:
    async def scenario() -> None:
        bus = EventBus(f"{memory_url()}?max_message_bytes=400")
        async with bus:
            with pytest.raises(BatchPublishError) as info:
                await bus.publish_many(
                    [
                        PaymentTaken(order_id="ok"),
                        OrderPlaced(order_id="x" * 500),
                        PaymentTaken(order_id="ok too"),
                        OrderPlaced(order_id="small"),
                    ]
                )
        error = info.value
        assert set(error.failures) == {1, 3}  # the oversize batch for its topic failed whole
        assert list(error.succeeded) == [0, 2]
        assert all(isinstance(e, MessageTooLargeError) for e in error.failures.values())
        assert "2 of 4" in str(error)

    run(scenario)


def test_oversize_publish_raises_and_sends_nothing() -> None:
    async def scenario() -> None:
        url, topic = memory_url(), new_topic()
        bus = EventBus(f"{url}?max_message_bytes=300")
        async with bus:
            with pytest.raises(MessageTooLargeError, match="300-byte limit") as info:
                await bus.publish(OrderPlaced(order_id="x" * 400), topic=topic)
        assert topic in str(info.value)
        assert topic not in MemoryAdapter(url).broker.topics

    run(scenario)


def test_publish_waits_out_a_short_connection_refusal() -> None:
    async def scenario() -> None:
        url, topic = memory_url(), new_topic()
        bus = EventBus(url)
        inbox = order_inbox(bus, topic)
        async with bus:
            await MemoryAdapter(url).faults.refuse_connections(0.2)
            await bus.publish(OrderPlaced(order_id="after"), topic=topic)
            assert await inbox.wait_count(1) == [OrderPlaced(order_id="after")]

    run(scenario)


def test_publish_gives_up_after_publish_timeout() -> None:
    async def scenario() -> None:
        url = memory_url()
        bus = EventBus(url, publish_timeout=0.1)
        async with bus:
            await MemoryAdapter(url).faults.refuse_connections(30)
            with pytest.raises(BrokerConnectionError, match="refusing connections"):
                await bus.publish(OrderPlaced(order_id="lost"))
            MemoryAdapter(url).faults.refuse_until = 0.0

    run(scenario)


def test_start_fails_fast_when_the_broker_refuses() -> None:
    async def scenario() -> None:
        url = memory_url()
        await MemoryAdapter(url).faults.refuse_connections(30)
        with pytest.raises(BrokerConnectionError):
            await EventBus(url).start()
        MemoryAdapter(url).faults.refuse_until = 0.0

    run(scenario)


class _PartlyFailingAdapter(MemoryAdapter):
    """Confirms every message of a batch except those whose order_id is "bad"."""

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        bad: dict[int, Exception] = {
            i: PublishError("not confirmed")
            for i, e in enumerate(envelopes)
            if json.loads(e.data).get("order_id") == "bad"
        }
        await super().publish(topic, [e for i, e in enumerate(envelopes) if i not in bad])
        if bad:
            raise BatchPublishError("partial", bad, len(envelopes))


def test_publish_many_maps_adapter_batch_failures_to_message_indexes() -> None:
    async def scenario() -> None:
        bus = EventBus(_PartlyFailingAdapter(memory_url()))
        async with bus:
            with pytest.raises(BatchPublishError) as info:
                await bus.publish_many(
                    [
                        PaymentTaken(order_id="ok"),  # 0: topic payments, index 0
                        OrderPlaced(order_id="ok"),  # 1: topic orders, index 0
                        PaymentTaken(order_id="bad"),  # 2: topic payments, index 1
                        OrderPlaced(order_id="bad"),  # 3: topic orders, index 1
                        OrderPlaced(order_id="ok"),  # 4: topic orders, index 2
                    ]
                )
        assert set(info.value.failures) == {2, 3}
        assert list(info.value.succeeded) == [0, 1, 4]

    run(scenario)
