"""The EventBus through its public API on the memory adapter: configuration errors,
publishing, handler dispatch, correlation, retries, dead letters and lifecycle."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import pytest

from eventbus import (
    BatchPublishError,
    BrokerConnectionError,
    Command,
    ConfigurationError,
    Context,
    Envelope,
    Event,
    EventBus,
    InvalidURLError,
    MemoryAdapter,
    MemoryIdempotencyStore,
    MessageTooLargeError,
    PublishError,
    RetryPolicy,
    UnknownSchemeError,
    registry_adapters,
)
from eventbus.adapter import SubscribeOptions, Subscription
from eventbus.errors import DuplicateSubscriptionError, EventBusError, mask_url
from eventbus.middleware import (
    DeadLetter,
    Idempotency,
    Next,
    Retry,
    Timeout,
    correlation,
    dlq_topic,
)
from eventbus.registry_adapters import adapter_class, adapter_from_url

WAIT = 5.0
T = TypeVar("T")


class OrderPlaced(Event, type="test.bus.order-placed", topic="test-bus-orders"):
    order_id: str


class PaymentTaken(Event, type="test.bus.payment-taken", topic="test-bus-payments"):
    order_id: str


class ChargeCard(Command, type="test.bus.charge-card", topic="test-bus-charges"):
    order_id: str


class Inbox(Generic[T]):
    """Collects what handlers saw; waits for a count with a timeout."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self._changed = asyncio.Event()

    def add(self, item: T) -> None:
        self.items.append(item)
        self._changed.set()

    async def wait_count(self, count: int, timeout: float = WAIT) -> list[T]:
        async def until() -> None:
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until(), timeout)
        return list(self.items)


def memory_url() -> str:
    """A broker of its own for each test, so runs never see each other's messages."""
    return f"memory://{uuid.uuid4()}"


def new_topic() -> str:
    return f"topic-{uuid.uuid4()}"


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 20))


async def dead_letters(url: str, topic: str, group: str, count: int) -> list[Envelope]:
    adapter = MemoryAdapter(url)
    subscription = await adapter.subscribe(
        dlq_topic(topic, group), SubscribeOptions(group=f"reader-{uuid.uuid4()}",
                                                  start_from="earliest"))
    found: list[Envelope] = []

    async def collect() -> None:
        async for delivery in subscription:
            assert delivery.envelope is not None
            found.append(delivery.envelope)
            await delivery.ack()
            if len(found) == count:
                return

    try:
        await asyncio.wait_for(collect(), WAIT)
    finally:
        await subscription.close()
    return found


# -- subscribe validation ----------------------------------------------------------------


def test_handler_must_be_async() -> None:
    bus = EventBus(memory_url())
    with pytest.raises(TypeError, match="must be an async function"):
        bus.subscribe(OrderPlaced)(lambda event: None)  # type: ignore[type-var]


@pytest.mark.parametrize("arity", [0, 3])
def test_handler_takes_event_or_event_and_context(arity: int) -> None:
    bus = EventBus(memory_url())

    async def none() -> None: ...

    async def three(event: OrderPlaced, ctx: Context, extra: int) -> None: ...

    handlers: dict[int, Any] = {0: none, 3: three}
    with pytest.raises(TypeError, match=f"not {arity} parameters"):
        bus.subscribe(OrderPlaced)(handlers[arity])


def test_subscribe_needs_a_target_and_a_known_delivery_mode() -> None:
    bus = EventBus(memory_url())
    with pytest.raises(ConfigurationError, match="at least one"):
        bus.subscribe()
    with pytest.raises(ConfigurationError, match="at_least_once"):
        bus.subscribe(OrderPlaced, delivery="exactly_once")  # type: ignore[arg-type]


def test_command_gets_exactly_one_handler_group() -> None:
    bus = EventBus(memory_url())

    @bus.subscribe(ChargeCard, group="billing")
    async def first(command: ChargeCard) -> None: ...

    async def second(command: ChargeCard) -> None: ...

    with pytest.raises(DuplicateSubscriptionError, match="already has handler group 'billing'"):
        bus.subscribe(ChargeCard, group="fraud")(second)
    assert isinstance(DuplicateSubscriptionError("x"), ConfigurationError)


def test_command_group_defaults_to_its_topic_and_event_group_to_the_source() -> None:
    bus = EventBus(memory_url(), source="svc")

    @bus.subscribe(ChargeCard)
    async def charge(command: ChargeCard) -> None: ...

    @bus.subscribe(OrderPlaced)
    async def placed(event: OrderPlaced) -> None: ...

    assert {(s.topic, s.group) for s in bus.subscriptions} == {
        ("test-bus-charges", "test-bus-charges"), ("test-bus-orders", "svc")}


def test_one_handler_per_type_and_group() -> None:
    bus = EventBus(memory_url())

    @bus.subscribe(OrderPlaced, group="g")
    async def first(event: OrderPlaced) -> None: ...

    async def second(event: OrderPlaced) -> None: ...

    with pytest.raises(DuplicateSubscriptionError, match="one handler per type and group"):
        bus.subscribe(OrderPlaced, group="g")(second)
    bus.subscribe(OrderPlaced, group="other")(second)  # another group fans out: fine

    topic = new_topic()
    bus.subscribe(topic, group="g")(first)
    with pytest.raises(DuplicateSubscriptionError, match="handler for all types"):
        bus.subscribe(topic, group="g")(second)


def test_several_types_on_one_topic_share_a_subscription() -> None:
    bus = EventBus(memory_url())

    class Shipped(Event, type="test.bus.shipped", topic="test-bus-orders", register=False):
        order_id: str

    @bus.subscribe(OrderPlaced, Shipped, group="g")
    async def either(event: Event) -> None: ...

    (spec,) = bus.subscriptions
    assert set(spec.handlers) == {"test.bus.order-placed", "test.bus.shipped"}


def test_chain_order_is_correlation_custom_deadletter_idempotency_retry_timeout() -> None:
    async def custom(ctx: Context, call_next: Next) -> None:
        await call_next(ctx)

    async def own(ctx: Context, call_next: Next) -> None:
        await call_next(ctx)

    bus = EventBus(memory_url(), middleware=[custom], idempotency=MemoryIdempotencyStore())

    @bus.subscribe(OrderPlaced, timeout=1.0, middleware=[own])
    async def handle(event: OrderPlaced) -> None: ...

    chain = bus.chain_for(bus.subscriptions[0])
    assert chain[:3] == [correlation, custom, own]
    assert [type(m) for m in chain[3:]] == [DeadLetter, Idempotency, Retry, Timeout]
    bare = EventBus(memory_url(), dead_letter=False)
    bare.subscribe(OrderPlaced, delivery="at_most_once")(handle)
    (retry,) = [m for m in bare.chain_for(bare.subscriptions[0]) if isinstance(m, Retry)]
    assert retry.policy.max_attempts == 1 and not retry.broker_redelivery
    assert not any(isinstance(m, DeadLetter) for m in bare.chain_for(bare.subscriptions[0]))


# -- URLs and adapters -------------------------------------------------------------------


def test_from_env_uses_eventbus_url(monkeypatch: pytest.MonkeyPatch) -> None:
    url = memory_url()
    monkeypatch.setenv("EVENTBUS_URL", url)
    bus = EventBus.from_env(source="svc")
    assert isinstance(bus.adapter, MemoryAdapter) and bus.adapter.url == url
    assert bus.source == "svc"
    monkeypatch.delenv("EVENTBUS_URL")
    assert EventBus.from_env().adapter.url == "memory://"
    monkeypatch.setenv("EVENTBUS_URL", "")
    assert EventBus.from_env().adapter.url == "memory://"


def test_from_env_reports_a_bad_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_URL", "nats://localhost:4222")
    with pytest.raises(UnknownSchemeError):
        EventBus.from_env()


def test_unknown_scheme_lists_installed_schemes_and_recommends_no_unpublished_package() -> None:
    # A package name that is not published invites dependency confusion: never name one.
    with pytest.raises(UnknownSchemeError) as info:
        EventBus.from_url("nats://user:s3cret@localhost:4222")
    message = str(info.value)
    assert "'nats'" in message and "s3cret" not in message
    assert "installed: kafka, memory" in message
    assert "pip install eventbus-nats" not in message and "eventbus.adapters" in message


def test_totally_unknown_scheme_says_how_to_register_an_adapter() -> None:
    with pytest.raises(UnknownSchemeError, match="no adapter for 'carrierpigeon' ships") as info:
        EventBus("carrierpigeon://coop/1")
    assert "eventbus.adapters" in str(info.value)
    assert isinstance(info.value, ConfigurationError | EventBusError)


def test_url_without_scheme_is_invalid_and_the_password_is_masked() -> None:
    with pytest.raises(InvalidURLError, match="has no scheme") as info:
        adapter_from_url("//admin:hunter2@broker:5672/")
    assert "hunter2" not in str(info.value)
    assert "admin:***@broker:5672" in str(info.value)
    with pytest.raises(InvalidURLError, match="no scheme"):
        EventBus("localhost")


def test_unparseable_url_is_invalid() -> None:
    with pytest.raises(InvalidURLError, match="cannot parse"):
        adapter_from_url("memory://[::1")


def test_memory_scheme_resolves_to_the_memory_adapter() -> None:
    assert adapter_class("memory") is MemoryAdapter


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:guest@rabbit:5672/vhost", "amqp://guest:***@rabbit:5672/vhost"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("kafka://broker:9092", "kafka://broker:9092"),
        ("nats://user@host", "nats://user@host"),
        ("sqs://id:p%40ss@host?region=eu", "sqs://id:***@host?region=eu"),
        ("http://[::1", "<unparseable url>"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_memory_adapter_bad_option_is_an_invalid_url() -> None:
    with pytest.raises(InvalidURLError, match="unknown option"):
        EventBus("memory://x?colour=blue")


# -- publishing --------------------------------------------------------------------------


def test_publish_returns_the_confirmed_envelope() -> None:
    async def scenario() -> None:
        url = memory_url()
        inbox: Inbox[Envelope] = Inbox()
        consumer = EventBus(url, source="consumer")

        @consumer.subscribe("test-bus-orders", group="raw")
        async def keep(envelope: Envelope) -> None:
            inbox.add(envelope)

        async with consumer, EventBus(url, source="orders-svc") as producer:
            sent = await producer.publish(
                OrderPlaced(order_id="o-1"), key="o-1", subject="orders/o-1",
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
        inbox: Inbox[OrderPlaced] = Inbox()
        bus = EventBus(url)

        @bus.subscribe(topic, group="g")
        async def keep(event: OrderPlaced) -> None:
            inbox.add(event)

        async with bus:
            sent = await bus.publish(OrderPlaced(order_id="o-2"), topic=topic,
                                     correlation_id="flow-9")
            assert await inbox.wait_count(1) == [OrderPlaced(order_id="o-2")]
        assert sent.correlationid == "flow-9"

    run(scenario)


def test_send_delivers_a_command_to_its_one_group_and_refuses_events() -> None:
    async def scenario() -> None:
        inbox: Inbox[ChargeCard] = Inbox()
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
        orders: Inbox[str] = Inbox()
        payments: Inbox[str] = Inbox()
        bus = EventBus(memory_url())

        @bus.subscribe(OrderPlaced, group="g")
        async def on_order(event: OrderPlaced) -> None:
            orders.add(event.order_id)

        @bus.subscribe(PaymentTaken, group="g")
        async def on_payment(event: PaymentTaken) -> None:
            payments.add(event.order_id)

        async with bus:
            envelopes = await bus.publish_many([
                OrderPlaced(order_id="1"), PaymentTaken(order_id="1"),
                OrderPlaced(order_id="2"), OrderPlaced(order_id="3"),
            ])
            assert await orders.wait_count(3) == ["1", "2", "3"]
            assert await payments.wait_count(1) == ["1"]
        assert len({e.id for e in envelopes}) == 4
        assert [e.type for e in envelopes] == ["test.bus.order-placed", "test.bus.payment-taken",
                                              "test.bus.order-placed", "test.bus.order-placed"]

    run(scenario)


def test_publish_many_partial_failure_names_the_failed_indexes() -> None:
    async def scenario() -> None:
        bus = EventBus(f"{memory_url()}?max_message_bytes=400")
        async with bus:
            with pytest.raises(BatchPublishError) as info:
                await bus.publish_many([
                    PaymentTaken(order_id="ok"),
                    OrderPlaced(order_id="x" * 500),
                    PaymentTaken(order_id="ok too"),
                    OrderPlaced(order_id="small"),
                ])
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
        inbox: Inbox[str] = Inbox()
        bus = EventBus(url)

        @bus.subscribe(topic, group="g")
        async def keep(event: OrderPlaced) -> None:
            inbox.add(event.order_id)

        async with bus:
            await MemoryAdapter(url).faults.refuse_connections(0.2)
            await bus.publish(OrderPlaced(order_id="after"), topic=topic)
            assert await inbox.wait_count(1) == ["after"]

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


# -- handling ----------------------------------------------------------------------------


def test_context_publish_carries_correlation_and_causation() -> None:
    async def scenario() -> None:
        inbox: Inbox[tuple[Envelope, Context]] = Inbox()
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
        typed: Inbox[OrderPlaced] = Inbox()
        bus = EventBus(url)

        @bus.subscribe(OrderPlaced, group="typed")
        async def one_type(event: OrderPlaced) -> None:
            typed.add(event)

        catch_all: Inbox[Event] = Inbox()

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


def test_retry_then_success_in_process() -> None:
    async def scenario() -> None:
        attempts: Inbox[int] = Inbox()
        bus = EventBus(memory_url(), retry=RetryPolicy(initial_delay=0.001,
                                                        in_process_attempts=3))

        @bus.subscribe(OrderPlaced, group="g")
        async def flaky(event: OrderPlaced, ctx: Context) -> None:
            attempts.add(ctx.attempt)
            if ctx.attempt < 3:
                raise RuntimeError("not yet")

        async with bus:
            await bus.publish(OrderPlaced(order_id="r"))
            assert await attempts.wait_count(3) == [1, 2, 3]

    run(scenario)


def test_failures_go_through_broker_redelivery_then_dead_letter() -> None:
    async def scenario() -> None:
        url = memory_url()
        attempts: Inbox[tuple[int, int]] = Inbox()
        policy = RetryPolicy(max_attempts=4, in_process_attempts=2, initial_delay=0.001)
        bus = EventBus(url, retry=policy)

        @bus.subscribe(OrderPlaced, group="g")
        async def broken(event: OrderPlaced, ctx: Context) -> None:
            attempts.add((ctx.delivery.attempt, ctx.attempt))
            raise ValueError("always broken")

        async with bus:
            sent = await bus.publish(OrderPlaced(order_id="d"))
            (dead,) = await dead_letters(url, "test-bus-orders", "g", 1)
        assert attempts.items == [(1, 1), (1, 2), (2, 3), (2, 4)]
        assert dead.id == sent.id and dead.data == sent.data
        assert dead.extensions["dlqattempts"] == "4"
        assert dead.extensions["dlqreason"] == "ValueError: always broken"
        assert dead.extensions["dlqgroup"] == "g"

    run(scenario)


def test_poison_events_are_dead_lettered_at_once() -> None:
    async def scenario() -> None:
        url, topic = memory_url(), new_topic()
        calls: Inbox[str] = Inbox()
        bus = EventBus(url)

        @bus.subscribe(topic, group="g")
        async def handle(event: Event) -> None:
            calls.add(type(event).__name__)

        async with bus:
            adapter = MemoryAdapter(url)
            unknown = Envelope.create(type="test.bus.never-registered", source="x")
            invalid = Envelope.create(type="test.bus.order-placed", source="x",
                                      data=b'{"order_id": 5}')
            await adapter.publish(topic, [unknown, invalid])
            await adapter.publish_raw(topic, b"\x00 definitely not a cloudevent")
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
        url = memory_url()
        bus = EventBus(url, retry=RetryPolicy(max_attempts=1))

        @bus.subscribe(OrderPlaced, group="g", timeout=0.05)
        async def hangs(event: OrderPlaced) -> None:
            await asyncio.Event().wait()

        async with bus:
            await bus.publish(OrderPlaced(order_id="slow"))
            (dead,) = await dead_letters(url, "test-bus-orders", "g", 1)
        assert dead.extensions["dlqexception"] == "eventbus.errors.HandlerTimeoutError"

    run(scenario)


def test_at_most_once_does_not_retry_or_redeliver() -> None:
    async def scenario() -> None:
        url = memory_url()
        calls: Inbox[int] = Inbox()
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
        calls: Inbox[int] = Inbox()
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
        calls: Inbox[str] = Inbox()
        marker: Inbox[str] = Inbox()
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


def test_concurrent_lanes_keep_per_key_order() -> None:
    async def scenario() -> None:
        topic = new_topic()
        seen: Inbox[tuple[str, int]] = Inbox()
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
        seen: Inbox[str] = Inbox()
        bus = EventBus(url)

        @bus.subscribe(topic, group="g")
        async def handle(event: OrderPlaced) -> None:
            seen.add(event.order_id)

        async with bus:
            await bus.publish(OrderPlaced(order_id="before"), topic=topic)
            await seen.wait_count(1)
            await MemoryAdapter(url).faults.drop_connections()
            await bus.publish(OrderPlaced(order_id="after"), topic=topic)
            assert await seen.wait_count(2) == ["before", "after"]

    run(scenario)


# -- lifecycle ---------------------------------------------------------------------------


def test_start_and_stop_are_idempotent_and_stop_waits_for_handlers() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url())
        started, finished = asyncio.Event(), asyncio.Event()

        @bus.subscribe(OrderPlaced, group="g")
        async def slow(event: OrderPlaced) -> None:
            started.set()
            await asyncio.sleep(0.05)
            finished.set()

        await bus.stop()  # not started: nothing to do
        await bus.start()
        await bus.start()
        await bus.publish(OrderPlaced(order_id="s"))
        await asyncio.wait_for(started.wait(), WAIT)
        await bus.stop()
        assert finished.is_set()
        await bus.stop()

    run(scenario)


def test_stop_cancels_handlers_that_outlive_the_timeout_and_the_message_returns() -> None:
    async def scenario() -> None:
        url = memory_url()
        bus = EventBus(url, shutdown_timeout=0.05)
        started: Inbox[int] = Inbox()

        @bus.subscribe(OrderPlaced, group="g")
        async def stuck(event: OrderPlaced, ctx: Context) -> None:
            started.add(ctx.delivery.attempt)
            await asyncio.Event().wait()

        await bus.start()
        await bus.publish(OrderPlaced(order_id="stuck"))
        await started.wait_count(1)
        await bus.stop()

        second = EventBus(url)
        again: Inbox[int] = Inbox()

        @second.subscribe(OrderPlaced, group="g")
        async def handle(event: OrderPlaced, ctx: Context) -> None:
            again.add(ctx.delivery.attempt)

        async with second:
            assert await again.wait_count(1) == [2]

    run(scenario)


def test_run_stops_gracefully_on_sigterm() -> None:
    async def scenario() -> None:
        url = memory_url()
        bus = EventBus(url)
        seen: Inbox[str] = Inbox()
        finished: Inbox[str] = Inbox()

        @bus.subscribe(OrderPlaced, group="g", start_from="earliest")
        async def handle(event: OrderPlaced) -> None:
            seen.add(event.order_id)
            await asyncio.sleep(0.05)
            finished.add(event.order_id)

        async with EventBus(url) as producer:
            await producer.publish(OrderPlaced(order_id="waiting"))
        task = asyncio.create_task(bus.run())
        await seen.wait_count(1)  # running: it consumed what was waiting
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, WAIT)
        assert finished.items == ["waiting"]  # the in-flight handler was let finish

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
                await bus.publish_many([
                    PaymentTaken(order_id="ok"),     # 0: topic payments, index 0
                    OrderPlaced(order_id="ok"),      # 1: topic orders, index 0
                    PaymentTaken(order_id="bad"),    # 2: topic payments, index 1
                    OrderPlaced(order_id="bad"),     # 3: topic orders, index 1
                    OrderPlaced(order_id="ok"),      # 4: topic orders, index 2
                ])
        assert set(info.value.failures) == {2, 3}
        assert list(info.value.succeeded) == [0, 1, 4]

    run(scenario)


class _SubscribeRefusingAdapter(MemoryAdapter):
    refuse = True

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        if self.refuse and topic == "test-bus-payments":
            raise BrokerConnectionError("subscribe refused")
        return await super().subscribe(topic, options)


def test_start_that_fails_midway_stops_what_it_started() -> None:
    async def scenario() -> None:
        adapter = _SubscribeRefusingAdapter(memory_url())
        bus = EventBus(adapter)
        seen: Inbox[str] = Inbox()

        @bus.subscribe(OrderPlaced, group="g")
        async def orders(event: OrderPlaced) -> None:
            seen.add(event.order_id)

        @bus.subscribe(PaymentTaken, group="g")
        async def payments(event: PaymentTaken) -> None:
            seen.add(event.order_id)

        with pytest.raises(BrokerConnectionError, match="subscribe refused"):
            await bus.start()
        adapter.refuse = False
        async with bus:  # a clean second start: nothing left over from the first
            await bus.publish(OrderPlaced(order_id="o"))
            await bus.publish(PaymentTaken(order_id="p"))
            assert sorted(await seen.wait_count(2)) == ["o", "p"]

    run(scenario)


class _EntryPoint:
    def __init__(self, name: str, loaded: object) -> None:
        self.name, self.value, self._loaded = name, f"fake:{name}", loaded

    def load(self) -> object:
        return self._loaded


def test_entry_point_that_is_not_an_adapter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_adapters, "entry_points",
                        lambda group: [_EntryPoint("fake", object())])
    with pytest.raises(UnknownSchemeError, match="is not an Adapter"):
        adapter_class("fake")


def test_entry_points_pick_the_adapter_and_memory_works_without_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry_adapters, "entry_points",
                        lambda group: [_EntryPoint("fake", _PartlyFailingAdapter)])
    assert adapter_class("fake") is _PartlyFailingAdapter
    assert adapter_class("memory") is MemoryAdapter  # not installed as a dist: still there
