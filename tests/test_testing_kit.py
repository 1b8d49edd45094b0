"""The test kit users test their own services with (eventbus.testing): a private broker
per test, drain(), one-line records, retries without delays, direct handler calls."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from eventbus import (
    Context,
    Event,
    EventBus,
    MemoryAdapter,
    MessageTooLargeError,
    Plain,
    RetryPolicy,
)
from eventbus.adapter import RawMessage
from eventbus.deadletters import DeadLetters
from eventbus.errors import ConfigurationError
from eventbus.testing import (
    DrainTimeoutError,
    TestBus,
    TestPublisher,
    call_handler,
    handler_context,
    without_delays,
)


class KitOrderPlaced(Event, type="test.kit.order-placed", topic="test-kit-orders"):
    order_id: str


class KitPaymentCharged(Event, type="test.kit.payment-charged", topic="test-kit-payments"):
    order_id: str


class KitReceiptSent(Event, type="test.kit.receipt-sent", topic="test-kit-receipts"):
    order_id: str


def create_bus(retry: RetryPolicy | None = None) -> EventBus:
    """A service built the factory way, with a slow retry policy a test must not wait on."""
    bus = EventBus(
        "memory://",
        source="kit-service",
        retry=retry or RetryPolicy(max_attempts=3, initial_delay=5.0),
    )
    failures: dict[str, int] = {}

    @bus.subscribe(KitOrderPlaced, group="billing")
    async def charge(event: KitOrderPlaced, ctx: Context) -> None:
        if event.order_id.startswith("flaky") and failures.get(event.order_id, 0) < 1:
            failures[event.order_id] = failures.get(event.order_id, 0) + 1
            raise ConnectionError("gateway timeout")
        if event.order_id.startswith("poison"):
            raise ValueError(f"cannot charge {event.order_id}")
        await ctx.publish(KitPaymentCharged(order_id=event.order_id))

    @bus.subscribe(KitPaymentCharged, group="mailer")
    async def mail(event: KitPaymentCharged, ctx: Context) -> None:
        await ctx.publish(KitReceiptSent(order_id=event.order_id))

    bus.charge = charge  # type: ignore[attr-defined]
    bus.mail = mail  # type: ignore[attr-defined]
    return bus


@pytest.mark.asyncio
async def test_drain_waits_for_the_whole_flow_and_records_it_in_one_line() -> None:
    bus = create_bus()
    async with TestBus(bus) as tb:
        await tb.bus.publish(KitOrderPlaced(order_id="1"))
        await tb.drain()
        assert tb.received(bus.charge) == [KitOrderPlaced(order_id="1")]  # type: ignore[attr-defined]
        assert tb.received(bus.mail) == [KitPaymentCharged(order_id="1")]  # type: ignore[attr-defined]
        assert tb.published(KitReceiptSent) == [KitReceiptSent(order_id="1")]
        assert tb.published() == [
            KitOrderPlaced(order_id="1"),
            KitPaymentCharged(order_id="1"),
            KitReceiptSent(order_id="1"),
        ]
        first, *_ = tb.published_envelopes()
        assert {e.correlationid for e in tb.published_envelopes()} == {first.id}
        assert tb.dead_lettered() == []


@pytest.mark.asyncio
async def test_retries_run_without_their_delays_and_are_recorded() -> None:
    bus = create_bus()
    started = time.monotonic()
    async with TestBus(bus) as tb:
        await tb.bus.publish(KitOrderPlaced(order_id="flaky-1"))
        await tb.drain()
    assert time.monotonic() - started < 2.0  # the policy's 5 s delay was not waited
    calls = tb.calls(bus.charge)  # type: ignore[attr-defined]
    assert [(c.attempt, type(c.error).__name__) for c in calls] == [
        (1, "ConnectionError"),
        (2, "NoneType"),
    ]
    assert [c.attempt for c in tb.retried(bus.charge)] == [2]  # type: ignore[attr-defined]
    assert tb.published(KitPaymentCharged) == [KitPaymentCharged(order_id="flaky-1")]
    assert bus.retry.initial_delay == 5.0  # put back after the test


@pytest.mark.asyncio
async def test_broker_redeliveries_are_drained_until_the_dead_letter() -> None:
    bus = create_bus(RetryPolicy(max_attempts=3, in_process_attempts=1, initial_delay=5.0))
    async with TestBus(bus) as tb:
        await tb.bus.publish(KitOrderPlaced(order_id="poison-1"))
        await tb.drain()
        (letter,) = tb.dead_lettered(bus.charge)  # type: ignore[attr-defined]
        assert letter.reason == "ValueError: cannot charge poison-1"
        assert letter.attempts == 3 and letter.group == "billing"
        assert tb.dead_lettered(KitOrderPlaced) == [letter]
        assert tb.dead_lettered("test-kit-orders") == [letter]
        assert tb.dead_lettered(bus.mail) == []  # type: ignore[attr-defined]
        assert [c.attempt for c in tb.calls(bus.charge)] == [1, 2, 3]  # type: ignore[attr-defined]
        assert tb.published(KitPaymentCharged) == []


@pytest.mark.asyncio
async def test_drain_timeout_names_topic_group_and_event() -> None:
    bus = EventBus("memory://", source="hangs")
    release = asyncio.Event()

    @bus.subscribe(KitOrderPlaced, group="stuck")
    async def hang(event: KitOrderPlaced) -> None:
        await release.wait()

    async with TestBus(bus) as tb:
        sent = await tb.bus.publish(KitOrderPlaced(order_id="1"))
        with pytest.raises(DrainTimeoutError) as caught:
            await tb.drain(timeout=0.2)
        text = str(caught.value)
        assert "'test-kit-orders'" in text and "'stuck'" in text and sent.id in text
        assert "being handled" in text
        release.set()
        await tb.drain()


@pytest.mark.asyncio
async def test_each_test_gets_a_private_broker_and_a_module_bus_is_restored() -> None:
    bus = create_bus()
    original = bus.adapter
    async with TestBus(bus) as first:
        await first.bus.publish(KitOrderPlaced(order_id="a"))
        await first.drain()
    assert bus.adapter is original
    async with TestBus(bus) as second:
        assert bus.adapter is not original
        await second.bus.publish(KitOrderPlaced(order_id="b"))
        await second.drain()
        assert second.received(bus.charge) == [KitOrderPlaced(order_id="b")]  # type: ignore[attr-defined]
    # Nothing went to the process-wide memory:// broker the bus was built on.
    assert "test-kit-orders" not in MemoryAdapter("memory://").broker.topics or all(
        "kit-service" not in g
        for g in MemoryAdapter("memory://").broker.topics["test-kit-orders"].groups
    )


@pytest.mark.asyncio
async def test_a_started_bus_is_refused() -> None:
    bus = EventBus(f"memory://{uuid.uuid4()}")
    async with bus:
        with pytest.raises(ConfigurationError, match="already started"):
            async with TestBus(bus):
                pass


@pytest.mark.asyncio
async def test_several_services_share_the_private_broker() -> None:
    orders, payments = EventBus(source="orders"), EventBus(source="payments")
    seen: list[str] = []

    @payments.subscribe(KitOrderPlaced, group="payments")
    async def charge(event: KitOrderPlaced) -> None:
        seen.append(event.order_id)

    async with TestBus(orders, payments) as tb:
        await orders.publish(KitOrderPlaced(order_id="x"))
        await tb.drain()
        assert tb.received(charge) == [KitOrderPlaced(order_id="x")] and seen == ["x"]


@pytest.mark.asyncio
async def test_dead_letters_on_memory_are_listed_at_once() -> None:
    bus = create_bus(without_delays(RetryPolicy(max_attempts=3, in_process_attempts=3)))
    async with TestBus(bus) as tb:
        await tb.bus.publish(KitOrderPlaced(order_id="poison-2"))
        await tb.drain()
        started = time.monotonic()
        letters = await DeadLetters(tb.bus.adapter).list("test-kit-orders", "billing")
        assert time.monotonic() - started < 0.5
        assert [letter.reason for letter in letters] == ["ValueError: cannot charge poison-2"]


@pytest.mark.asyncio
async def test_call_handler_captures_publishes_with_attempt_and_correlation() -> None:
    attempts: list[int] = []

    async def charge(event: KitOrderPlaced, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        await ctx.publish(KitPaymentCharged(order_id=event.order_id))

    assert await call_handler(charge, KitOrderPlaced(order_id="7"), attempt=2) == [
        KitPaymentCharged(order_id="7")
    ]
    assert attempts == [2]

    publisher = TestPublisher()
    await call_handler(charge, KitOrderPlaced(order_id="8"), publisher=publisher)
    (envelope,) = publisher.envelopes
    assert envelope.causationid is not None and publisher.topics == ["test-kit-payments"]

    async def plain(event: KitOrderPlaced) -> None:
        raise RuntimeError(event.order_id)

    with pytest.raises(RuntimeError, match="9"):
        await call_handler(plain, KitOrderPlaced(order_id="9"))


def test_handler_context_and_without_delays() -> None:
    ctx = handler_context(KitOrderPlaced(order_id="1"), attempt=3, group="billing")
    assert (ctx.attempt, ctx.previous_attempts, ctx.topic, ctx.group) == (
        3,
        2,
        "test-kit-orders",
        "billing",
    )
    policy = without_delays(RetryPolicy(max_attempts=4, in_process_attempts=2))
    assert (policy.max_attempts, policy.in_process_attempts, policy.delay(3)) == (4, 2, 0.0)


def test_the_plugin_fixture_gives_from_env_a_private_broker(eventbus_memory_url: str) -> None:
    bus = EventBus.from_env()
    assert bus.adapter.url == eventbus_memory_url != "memory://"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_kit_runs_under_anyio(anyio_backend: str) -> None:
    bus = create_bus()
    async with TestBus(bus) as tb:
        await tb.bus.publish(KitOrderPlaced(order_id="any"))
        await tb.drain()
        assert tb.published(KitReceiptSent) == [KitReceiptSent(order_id="any")]


@pytest.mark.asyncio
async def test_drain_waits_for_a_duplicate_published_before_the_first_was_handled() -> None:
    bus = EventBus(source="dupes")

    @bus.subscribe(KitOrderPlaced, group="counter")
    async def count(event: KitOrderPlaced) -> None:
        await asyncio.sleep(0)

    async with TestBus(bus) as tb:
        sent = await bus.publish(KitOrderPlaced(order_id="twice"))
        await bus.publish_envelopes(KitOrderPlaced.default_topic(), [sent])  # same id
        await tb.drain()
        assert tb.received(count) == [KitOrderPlaced(order_id="twice")] * 2


@pytest.mark.asyncio
async def test_a_refused_publish_is_not_owed_and_a_history_reader_is() -> None:
    bus = EventBus("memory://?max_message_bytes=300", source="sizes")

    @bus.subscribe(KitOrderPlaced, group="history", start_from="earliest")
    async def read(event: KitOrderPlaced) -> None:
        return None

    async with TestBus(bus) as tb:
        with pytest.raises(MessageTooLargeError):
            await bus.publish(KitOrderPlaced(order_id="x" * 500))
        await tb.drain(timeout=1.0)  # nothing was sent, so nothing is owed
        assert tb.published() == []
        await bus.publish(KitOrderPlaced(order_id="small"))
        await tb.drain()
        assert tb.received(read) == [KitOrderPlaced(order_id="small")]


def test_test_publisher_refuses_an_event_sent_as_a_command() -> None:
    async def scenario() -> None:
        with pytest.raises(ConfigurationError, match="is an event"):
            await TestPublisher().send(KitOrderPlaced(order_id="1"))  # type: ignore[arg-type]

    asyncio.run(scenario())


def _stuck_bus() -> EventBus:
    bus = EventBus("memory://", source="stuck", shutdown_timeout=10.0)

    @bus.subscribe(KitOrderPlaced, group="stuck")
    async def hang(event: KitOrderPlaced) -> None:
        await asyncio.Event().wait()

    return bus


@pytest.mark.asyncio
async def test_leaving_after_a_drain_timeout_does_not_wait_the_shutdown_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(DrainTimeoutError):
        async with TestBus(_stuck_bus()) as tb:
            await tb.bus.publish(KitOrderPlaced(order_id="1"))
            await tb.drain(timeout=0.2)
    assert time.monotonic() - started < 3.0


@pytest.mark.asyncio
async def test_a_drain_timeout_caught_in_the_block_still_leaves_at_once() -> None:
    started = time.monotonic()
    async with TestBus(_stuck_bus()) as tb:
        await tb.bus.publish(KitOrderPlaced(order_id="1"))
        with pytest.raises(DrainTimeoutError):
            await tb.drain(timeout=0.2)
    assert time.monotonic() - started < 3.0


class KitShipped(Event, type="test.kit.shipped", topic="test-kit-shipments"):
    order_id: str


class KitReturned(Event, type="test.kit.returned", topic="test-kit-shipments"):
    order_id: str


@pytest.mark.asyncio
async def test_a_foreign_message_reaches_a_plain_subscription_as_it_would_in_production() -> None:
    """The kit's recording broker hands on every transport fact of a delivery: the
    headers a plain subscription reads its type and correlation from, and the stable
    position its event id is derived from (the same in every group)."""
    bus = EventBus("memory://")
    seen: list[tuple[str, Event, str, str | None]] = []
    both = asyncio.Event()
    for group in ("a", "b"):

        @bus.subscribe(
            KitShipped, KitReturned, group=group, wire_format=Plain(type_header="x-type")
        )
        async def handle(event: KitShipped | KitReturned, ctx: Context) -> None:
            seen.append((ctx.group, event, ctx.envelope.id, ctx.envelope.correlationid))
            if len(seen) == 2:
                both.set()

    async with TestBus(bus) as tb:
        headers = {"x-type": b"test.kit.returned", "correlation_id": b"corr-7"}
        await tb.bus.adapter.publish_raw(
            "test-kit-shipments", RawMessage(b'{"order_id": "r-1"}', headers)
        )
        await asyncio.wait_for(both.wait(), 5)
    assert {(g, e) for g, e, _, _ in seen} == {
        ("a", KitReturned(order_id="r-1")),
        ("b", KitReturned(order_id="r-1")),
    }
    assert len({envelope_id for _, _, envelope_id, _ in seen}) == 1, seen
    assert {correlation for *_, correlation in seen} == {"corr-7"}
