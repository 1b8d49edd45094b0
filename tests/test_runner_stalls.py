"""A subscription that sits idle while its broker holds messages is reported stalled and
subscribed again; a message whose runs never finished is dead-lettered before it runs again;
a bus whose broker never answers fails its start in bounded time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from eventbus import Envelope, EventBus, MemoryAdapter
from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.codec import decode_binary
from eventbus.errors import BrokerConnectionError
from eventbus.middleware.retry import RetryPolicy
from tests.bus_support import (
    Collector,
    OrderPlaced,
    dead_letters,
    memory_url,
    new_topic,
    run,
    until,
)


class _Deaf(Subscription):
    """A subscription whose pulls go nowhere (its consumer was deleted on the broker), but
    whose broker still counts the group's messages."""

    def __init__(self, real: Subscription) -> None:
        self.real = real

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        await asyncio.Event().wait()
        yield  # type: ignore[unreachable]

    async def close(self) -> None:
        await self.real.close()

    async def backlog(self) -> int | None:
        return await self.real.backlog()


class _FirstSubscriptionDeaf(MemoryAdapter):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.subscribed = 0
        self.on_subscribe: Callable[[], None] = lambda: None

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        self.subscribed += 1
        if self.subscribed > 1:
            self.on_subscribe()
        real = await super().subscribe(topic, options)
        return _Deaf(real) if self.subscribed == 1 else real


def test_an_idle_subscription_with_a_backlog_is_reported_stalled_and_subscribes_again() -> None:
    async def scenario() -> None:
        url = memory_url()
        adapter = _FirstSubscriptionDeaf(url)
        bus = EventBus(adapter, stall_after=0.3)
        inbox: Collector[OrderPlaced] = Collector()

        @bus.subscribe(OrderPlaced, group="billing")
        async def handle(event: OrderPlaced) -> None:
            inbox.add(event)

        # Reported while it lasts: when the runner subscribes again, and until the new
        # subscription hands something out.
        seen: list[tuple[str, str]] = []
        adapter.on_subscribe = lambda: seen.append(
            (bus._runners[0].health().state, str(bus._runners[0].health().error))
        )
        async with bus:
            await bus.publish(OrderPlaced(order_id="1"))
            await inbox.wait_count(1)
            assert adapter.subscribed == 2
            state, error = seen[-1]
            assert state == "stalled" and "received nothing" in error, seen
            await until(lambda: bus._runners[0].health().state == "running", timeout=5)
            assert (await bus.health()).ok

    run(scenario)


def test_a_stalled_subscription_is_healthy_as_soon_as_it_handles_again() -> None:
    """Not at the stall watch's next look (a third of stall_after, up to 10 s later):
    health() said stalled meanwhile although messages were being handled (#25)."""

    async def scenario() -> None:
        adapter = _FirstSubscriptionDeaf(memory_url())
        bus = EventBus(adapter, stall_after=1.5)
        inbox: Collector[OrderPlaced] = Collector()

        @bus.subscribe(OrderPlaced, group="billing")
        async def handle(event: OrderPlaced) -> None:
            inbox.add(event)

        async with bus:
            await bus.publish(OrderPlaced(order_id="1"))
            await inbox.wait_count(1)
            assert adapter.subscribed == 2
            health = await bus.health()
            assert health.ok, health.subscriptions

    run(scenario)


def test_a_quiet_subscription_with_nothing_waiting_is_not_stalled() -> None:
    async def scenario() -> None:
        adapter = _FirstSubscriptionDeaf(memory_url())
        bus = EventBus(adapter, stall_after=0.2)
        bus.subscribe(OrderPlaced, group="billing")(_ignore)
        async with bus:
            await asyncio.sleep(1.0)
            health = await bus.health()
            assert health.ok and health.subscriptions[0].state == "running"
            assert health.subscriptions[0].backlog == 0
            assert health.subscriptions[0].idle_for >= 0.5
            assert adapter.subscribed == 1

    run(scenario)


class _Unanswered(Subscription):
    """A subscription that consumes as usual, whose backlog query fails while its
    adapter is not ``answering``: Redis Streams on a frozen connection, where the
    blocking read just waits and the stall watch's query goes unanswered."""

    def __init__(self, real: Subscription, adapter: _Unanswering) -> None:
        self.real = real
        self.adapter = adapter

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        async for delivery in self.real:
            yield delivery

    async def close(self) -> None:
        await self.real.close()

    async def backlog(self) -> int | None:
        if not self.adapter.answering:
            raise BrokerConnectionError("the broker did not answer (frozen)")
        return await self.real.backlog()


class _Unanswering(MemoryAdapter):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.answering = True
        self.subscribed = 0

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        self.subscribed += 1
        return _Unanswered(await super().subscribe(topic, options), self)


def test_a_stall_from_an_unanswered_backlog_ends_once_the_broker_answers_with_none() -> None:
    """An idle subscription whose backlog query goes unanswered is reported stalled and
    subscribes again; once the broker answers that nothing waits for the group, it is
    running again, though an idle group makes no progress to end the stall (#28:
    /readyz stayed 503 for good after a freeze of Redis)."""

    async def scenario() -> None:
        adapter = _Unanswering(memory_url())
        bus = EventBus(adapter, stall_after=0.2)
        bus.subscribe(OrderPlaced, group="billing")(_ignore)
        async with bus:
            adapter.answering = False
            await until(lambda: bus._runners[0].health().state == "stalled", timeout=5)
            adapter.answering = True
            await until(lambda: bus._runners[0].health().state == "running", timeout=5)
            health = await bus.health()
            assert health.ok, health.detail
            assert adapter.subscribed >= 2, "the stall did not subscribe again"

    run(scenario)


async def _ignore(event: OrderPlaced) -> None:
    pass


def test_stall_after_must_be_positive() -> None:
    from eventbus.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="stall_after"):
        EventBus("memory://", stall_after=0)


def test_a_message_whose_runs_never_finished_is_dead_lettered_before_running_again() -> None:
    """Three consumers took the message and died without settling it (their connections
    gone: what a crash looks like to the broker). The next one dead-letters it unrun."""

    async def scenario() -> None:
        url, topic = memory_url(), new_topic()
        raw = MemoryAdapter(url)
        await raw.connect()
        options = SubscribeOptions(group="billing")
        subscription = await raw.subscribe(topic, options)  # the group exists
        sent = Envelope.create(
            type=OrderPlaced.event_type(), source="t", data=OrderPlaced(order_id="9").to_bytes()
        )
        await raw.publish(topic, [sent])
        for crash in range(3):
            async for delivery in subscription:
                assert delivery.attempt == crash + 1
                break
            raw.broker.generation += 1
            subscription.lose_connection()  # type: ignore[attr-defined]
            subscription = await raw.subscribe(topic, options)
        await subscription.close()
        runs: list[int] = []
        bus = EventBus(url, retry=RetryPolicy(max_attempts=3, initial_delay=0.01))

        @bus.subscribe(topic, group="billing")
        async def handle(event: OrderPlaced) -> None:
            runs.append(1)

        async with bus:
            (dead,) = await dead_letters(url, topic, "billing", 1)
        assert runs == [], "a message that crashed max_attempts times ran again"
        assert dead.id == sent.id
        assert dead.extensions["dlqexception"] == "eventbus.errors.RunsExhaustedError"
        assert dead.extensions["dlqattempts"] == "3"

    run(scenario)


def test_a_redelivery_with_budget_left_still_runs() -> None:
    async def scenario() -> None:
        url, topic = memory_url(), new_topic()
        raw = MemoryAdapter(url)
        options = SubscribeOptions(group="billing")
        subscription = await raw.subscribe(topic, options)
        await raw.publish(
            topic,
            [
                Envelope.create(
                    type=OrderPlaced.event_type(),
                    source="t",
                    data=OrderPlaced(order_id="9").to_bytes(),
                )
            ],
        )
        async for _ in subscription:
            break
        subscription.lose_connection()  # type: ignore[attr-defined]
        inbox: Collector[int] = Collector()
        bus = EventBus(url, retry=RetryPolicy(max_attempts=3, initial_delay=0.01))

        @bus.subscribe(topic, group="billing")
        async def handle(event: OrderPlaced, ctx: object) -> None:
            inbox.add(getattr(ctx, "attempt", 0))

        async with bus:
            assert await inbox.wait_count(1) == [2]

    run(scenario)


def test_a_binary_event_dead_letter_keeps_its_data_when_the_binary_encoding_fits() -> None:
    """Bytes data counted as base64 (the structured estimate) made a 6 KB binary event's
    dead letter drop its data under an 8 KB limit, though the binary letter fits."""

    async def scenario() -> None:
        url, topic = f"{memory_url()}?max_message_bytes=8192", new_topic()
        bus = EventBus(url, retry=RetryPolicy(max_attempts=1))
        data = bytes(range(256)) * 24  # 6,144 bytes, not JSON

        @bus.subscribe(topic, group="g")
        async def fail(envelope: Envelope) -> None:
            raise RuntimeError("no")

        async with bus:
            await bus.publish_envelopes(
                topic,
                [
                    Envelope.create(
                        type="test.blob",
                        source="t",
                        data=data,
                        datacontenttype="application/octet-stream",
                    )
                ],
            )
            (dead,) = await dead_letters(url, topic, "g", 1)
        assert dead.data == data
        assert "dlqdropped" not in dead.extensions or "data" not in dead.extensions["dlqdropped"]

    run(scenario)


def test_start_fails_within_start_timeout_when_the_broker_never_answers() -> None:
    async def scenario() -> None:
        url = memory_url()
        adapter = MemoryAdapter(url)
        await adapter.faults.freeze()
        bus = EventBus(url, start_timeout=0.3)
        bus.subscribe(OrderPlaced, group="g")(_ignore)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(BrokerConnectionError, match="start_timeout"):
            await bus.start()
        assert loop.time() - started < 1.0
        await adapter.faults.thaw()

    run(scenario)


def test_a_foreign_binary_header_never_makes_a_cloudevent_unreadable() -> None:
    envelope = decode_binary(
        {
            "ce_specversion": b"1.0",
            "ce_id": b"1",
            "ce_source": b"s",
            "ce_type": b"t",
            "x-b3-trace": b"\xff\xfe\x00",
            "content-type": b"application/json",
        },
        b"{}",
        "ce_",
    )
    assert (envelope.id, envelope.type) == ("1", "t")


def test_a_ce_header_that_is_not_text_is_a_decode_error_naming_it() -> None:
    from eventbus.errors import DecodeError

    with pytest.raises(DecodeError, match="ce_type"):
        decode_binary(
            {"ce_specversion": b"1.0", "ce_id": b"1", "ce_source": b"s", "ce_type": b"\xff"},
            b"{}",
            "ce_",
        )
