"""Nothing dies silently: failures around the handler (cancellation, a failing ack, a
fetch that breaks or ends, a lost subscription's queued work, garbage on the topic)
are recovered from or surfaced, never swallowed."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from eventbus import (
    ConfigurationError,
    Context,
    Delivery,
    Envelope,
    Event,
    EventBus,
    MemoryAdapter,
    RetryPolicy,
    SubscribeOptions,
    Subscription,
)
from eventbus import _memory_broker as memory_broker
from eventbus import settlement as settlement_module
from eventbus.adapter import HealthReport, RawMessage
from eventbus.backoff import Backoff
from eventbus.errors import ConnectionLostError, SubscriptionFailedError
from eventbus.middleware import Next
from tests.bus_support import (
    WAIT,
    Collector,
    Records,
    dead_letters,
    dlq_size,
    memory_url,
    new_topic,
    run,
    until,
)


class Job(Event, type="test.runner.job", topic="test-runner-jobs"):
    n: int


def test_undecodable_message_is_rejected_not_dead_lettered_when_dead_letters_are_off() -> None:
    async def scenario() -> None:
        url, topic = memory_url(), new_topic()
        bus = EventBus(url, dead_letter=False, retry=RetryPolicy(max_attempts=1))
        handled: Collector[int] = Collector()

        @bus.subscribe(topic, group="g")
        async def handle(event: Job) -> None:
            handled.add(event.n)

        with Records("eventbus") as logs:
            async with bus:
                adapter = MemoryAdapter(url)
                await adapter.publish_raw(topic, RawMessage(b"\x00 not a cloudevent"))
                good = Envelope.create(type="test.runner.job", source="t", data=b'{"n": 7}')
                await adapter.publish(topic, [good])
                assert await handled.wait_count(1) == [7]
                await until(
                    lambda: any(
                        "undecodable" in m and "rejected" in m for m in logs.messages(logging.ERROR)
                    )
                )
        assert dlq_size(url, topic, "g") == 0

    run(scenario)


class FakeDelivery(Delivery):
    """A delivery whose broker calls fail the first ``failures`` times."""

    __slots__ = ("calls", "failures")

    def __init__(self, failures: int) -> None:
        super().__init__(topic="t", group="g", envelope=None, message_id="m-1")
        self.failures = failures
        self.calls = 0

    async def _call(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionLostError("commit failed: connection reset")

    async def _ack(self) -> None:
        await self._call()

    async def _nack(self, delay: float) -> None:
        await self._call()

    async def _reject(self) -> None:
        await self._call()


def test_a_failed_ack_leaves_the_delivery_unsettled() -> None:
    async def scenario() -> None:
        delivery = FakeDelivery(failures=1)
        with pytest.raises(ConnectionLostError):
            await delivery.ack()
        assert delivery.settled is None
        await delivery.nack(0.0)  # allowed: the ack never happened
        assert delivery.settled == "nack"

    run(scenario)


def test_a_failed_ack_does_not_block_the_key_and_the_message_comes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = memory_broker.MemoryDelivery.ack
    calls = {"n": 0}

    async def flaky_ack(self: memory_broker.MemoryDelivery) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionLostError("commit failed: connection reset")
        await original(self)

    # The delivery's ack itself (the memory adapter settles in place, no _ack step).
    monkeypatch.setattr(memory_broker.MemoryDelivery, "ack", flaky_ack)

    async def scenario() -> None:
        bus = EventBus(memory_url())
        seen: Collector[int] = Collector()

        @bus.subscribe(Job, group="g")
        async def handle(event: Job) -> None:
            seen.add(event.n)

        with Records("eventbus") as logs:
            async with bus:
                await bus.publish(Job(n=1), key="k")
                await bus.publish(Job(n=2), key="k")
                # n=1 is handled again (its ack was lost), and n=2 is not stuck behind it.
                assert await seen.wait_count(3) == [1, 1, 2]
        assert any("ack" in m and "failed" in m for m in logs.messages(logging.WARNING))

    run(scenario)


def test_a_handler_raising_cancelled_error_does_not_kill_its_lane() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url(), retry=RetryPolicy(initial_delay=0.001))
        handled: Collector[tuple[int, int]] = Collector()

        @bus.subscribe(Job, group="g")
        async def handle(event: Job, ctx: Context) -> None:
            if event.n == 0 and ctx.attempt == 1:
                other = asyncio.create_task(asyncio.sleep(10))
                other.cancel()
                await other  # CancelledError in this task, which nobody cancelled
            handled.add((event.n, ctx.attempt))

        async with bus:
            for n in range(4):
                await bus.publish(Job(n=n))
            got = await handled.wait_count(4)
        assert got == [(0, 2), (1, 1), (2, 1), (3, 1)]  # retried as a failure, lane alive

    run(scenario)


def test_a_cancelled_error_with_dead_letters_on_and_no_retry_is_dead_lettered() -> None:
    async def scenario() -> None:
        url = memory_url()
        bus = EventBus(url, retry=RetryPolicy(max_attempts=1))
        handled: Collector[int] = Collector()

        @bus.subscribe(Job, group="g")
        async def handle(event: Job) -> None:
            if event.n == 0:
                other = asyncio.create_task(asyncio.sleep(10))
                other.cancel()
                await other
            handled.add(event.n)

        async with bus:
            await bus.publish(Job(n=0))
            await bus.publish(Job(n=1))
            assert await handled.wait_count(1) == [1]
            (dead,) = await dead_letters(url, "test-runner-jobs", "g", 1)
        assert dead.extensions["dlqexception"] == "eventbus.errors.HandlerCancelledError"

    run(scenario)


class _Scripted(Subscription):
    """Wraps a memory subscription; ``script`` decides what happens after each delivery."""

    def __init__(self, inner: Subscription, after_each: str, fail_at_once: bool) -> None:
        self.inner = inner
        self.after_each = after_each
        self.fail_at_once = fail_at_once

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        if self.fail_at_once:
            raise OSError("client library hiccup (not translated)")
        async for delivery in self.inner:
            yield delivery
            if self.after_each:
                await asyncio.sleep(0.05)  # let the lane take it: this is a later hiccup
            if self.after_each == "raise":
                raise OSError("client library hiccup (not translated)")
            if self.after_each == "end":
                return

    async def close(self) -> None:
        await self.inner.close()


class FlakyAdapter(MemoryAdapter):
    """A memory adapter whose subscriptions break (``raise``) or end (``end``) after their
    first delivery, or fail before any once resubscribed (``fail_at_once``), or refuse
    to resubscribe."""

    def __init__(
        self,
        url: str,
        after_each: str = "",
        fail_at_once: bool = False,
        refuse_resubscribe: bool = False,
    ) -> None:
        super().__init__(url)
        self.after_each = after_each
        self.fail_at_once = fail_at_once
        self.refuse_resubscribe = refuse_resubscribe
        self.subscribes = 0

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        self.subscribes += 1
        if self.refuse_resubscribe and self.subscribes > 1:
            raise ConfigurationError(f"topic {topic!r} was deleted and may not be created")
        inner = await super().subscribe(topic, options)
        return _Scripted(inner, self.after_each, self.fail_at_once and self.subscribes > 1)


@pytest.mark.parametrize("after_each", ["raise", "end"])
def test_fetching_recovers_when_the_iterator_raises_or_ends(after_each: str) -> None:
    async def scenario() -> None:
        bus = EventBus(FlakyAdapter(memory_url(), after_each=after_each))
        handled: Collector[int] = Collector()

        @bus.subscribe(Job, group="g")
        async def handle(event: Job) -> None:
            handled.add(event.n)

        with Records("eventbus") as logs:
            async with bus:
                for n in range(5):
                    await bus.publish(Job(n=n))
                assert sorted(set(await handled.wait_count(5))) == [0, 1, 2, 3, 4]
                assert (await bus.health()).ok
        assert any("re-subscribing" in m for m in logs.messages(logging.WARNING))

    run(scenario)


@pytest.mark.parametrize("cause", ["repeated", "configuration"])
def test_a_subscription_that_keeps_failing_is_reported_dead(cause: str) -> None:
    async def scenario() -> None:
        adapter = (
            FlakyAdapter(memory_url(), after_each="raise", fail_at_once=True)
            if cause == "repeated"
            else FlakyAdapter(memory_url(), after_each="raise", refuse_resubscribe=True)
        )
        bus = EventBus(adapter)

        @bus.subscribe(Job, group="g")
        async def handle(event: Job) -> None:
            pass

        with Records("eventbus") as logs:
            async with bus:
                await bus.publish(Job(n=0))
                health = await wait_states(bus, ["dead"])
        assert not health.ok
        (sub,) = health.subscriptions
        assert (sub.topic, sub.group, sub.state) == ("test-runner-jobs", "g", "dead")
        expected = "OSError" if cause == "repeated" else "ConfigurationError"
        assert sub.error is not None and expected in sub.error
        assert any("dead for good" in m for m in logs.messages(logging.ERROR))

    run(scenario)


def _states(health: Any) -> list[str]:
    return [s.state for s in health.subscriptions]


async def wait_states(bus: EventBus, wanted: list[str]) -> Any:
    """Poll ``bus.health()`` until its subscriptions are in the ``wanted`` states."""

    async def poll() -> Any:
        while True:
            health = await bus.health()
            if _states(health) == wanted:
                return health
            await asyncio.sleep(0.01)

    return await asyncio.wait_for(poll(), WAIT)


def test_run_raises_when_a_subscription_dies_for_good() -> None:
    async def scenario() -> None:
        bus = EventBus(FlakyAdapter(memory_url(), after_each="raise", refuse_resubscribe=True))

        @bus.subscribe(Job, group="g")
        async def handle(event: Job) -> None:
            pass

        async def poke() -> None:
            await until(lambda: bool(bus._runners))  # started
            await bus.publish(Job(n=0))

        poking = asyncio.create_task(poke())
        with pytest.raises(SubscriptionFailedError, match="test-runner-jobs/g"):
            await bus.run()
        await poking

    run(scenario)


def test_health_reports_reconnecting_while_the_broker_refuses() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url())
        handled: Collector[int] = Collector()

        @bus.subscribe(Job, group="g")
        async def handle(event: Job) -> None:
            handled.add(event.n)

        async with bus:
            assert _states(await bus.health()) == ["running"]
            assert isinstance(bus.adapter, MemoryAdapter)
            await bus.adapter.faults.refuse_connections(0.5)
            reconnecting = await wait_states(bus, ["reconnecting"])
            assert not reconnecting.ok and "reconnecting" in reconnecting.detail
            await bus.publish(Job(n=1))
            assert await handled.wait_count(1) == [1]
            assert (await wait_states(bus, ["running"])).ok

    run(scenario)


def test_work_queued_from_a_lost_subscription_is_dropped_not_run_twice() -> None:
    async def scenario() -> None:
        # Work queues only in lanes: concurrency 1 runs each delivery in the fetch loop.
        # Two lanes, one key, handed out at once (hold_keys=false): every job queues
        # in the same lane, FIFO, behind the one that blocks.
        adapter = FlakyAdapter(memory_url() + "?hold_keys=false")  # counts subscribes
        bus = EventBus(adapter)
        runs: collections.Counter[int] = collections.Counter()
        started, release = asyncio.Event(), asyncio.Event()
        handled: Collector[int] = Collector()

        @bus.subscribe(Job, group="g", concurrency=2)
        async def handle(event: Job) -> None:
            runs[event.n] += 1
            if event.n == 0 and not started.is_set():
                started.set()
                await release.wait()
            handled.add(event.n)

        async with bus:
            await bus.publish_many([Job(n=i) for i in range(8)], key="k")
            await asyncio.wait_for(started.wait(), WAIT)  # first running, 7 queued
            await adapter.faults.drop_connections()
            await until(lambda: adapter.subscribes >= 2)  # the runner has re-subscribed
            release.set()
            # One lane, FIFO: a marker published now is handled after every redelivery.
            await bus.publish(Job(n=99), key="k")
            await until(lambda: 99 in handled.items)
        del runs[99]
        # Only the message running when the connection dropped runs twice (its ack
        # was lost with the connection); the seven queued ones run once.
        assert sum(runs.values()) == 9, dict(runs)
        assert runs[0] == 2

    run(scenario)


def test_one_lane_runs_in_the_fetch_loop_and_a_lost_subscription_runs_nothing_twice() -> None:
    """Concurrency 1 handles each delivery in the fetch loop: nothing is fetched ahead,
    so a connection lost while the handler runs costs only that message's rerun."""

    async def scenario() -> None:
        adapter = FlakyAdapter(memory_url())
        bus = EventBus(adapter)
        runs: collections.Counter[int] = collections.Counter()
        started, release = asyncio.Event(), asyncio.Event()
        handled: Collector[int] = Collector()

        @bus.subscribe(Job, group="g")
        async def handle(event: Job) -> None:
            runs[event.n] += 1
            if event.n == 0 and not started.is_set():
                started.set()
                await release.wait()
            handled.add(event.n)

        async with bus:
            await bus.publish_many([Job(n=i) for i in range(8)])
            await asyncio.wait_for(started.wait(), WAIT)
            await adapter.faults.drop_connections()
            release.set()
            await until(lambda: adapter.subscribes >= 2)
            await bus.publish(Job(n=99))
            await until(lambda: 99 in handled.items)
        del runs[99]
        assert runs[0] == 2 and sum(runs.values()) == 9, dict(runs)

    run(scenario)


def test_failures_outside_the_handler_are_redelivered_with_growing_delays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A step outside the handler failing (a store outage) must not hammer the broker."""
    monkeypatch.setattr(
        settlement_module,
        "REDELIVERY_BACKOFF",
        Backoff(initial=0.01, multiplier=2.0, max_delay=0.04, jitter=0.0),
    )
    delays: list[float] = []
    original = memory_broker.MemoryDelivery._nack

    async def recording_nack(self: memory_broker.MemoryDelivery, delay: float) -> None:
        delays.append(delay)
        await original(self, delay)

    monkeypatch.setattr(memory_broker.MemoryDelivery, "_nack", recording_nack)

    async def scenario() -> None:
        async def store_down(ctx: Context, call_next: Next) -> None:
            if ctx.delivery.attempt <= 4:
                raise OSError("idempotency store unreachable")
            await call_next(ctx)

        bus = EventBus(memory_url(), middleware=[store_down])
        handled: Collector[int] = Collector()

        @bus.subscribe(Job, group="g")
        async def handle(event: Job, ctx: Context) -> None:
            handled.add(ctx.delivery.attempt)

        async with bus:
            await bus.publish(Job(n=1))
            assert await handled.wait_count(1) == [5]
        assert delays == [0.01, 0.02, 0.04, 0.04]

    run(scenario)


def test_a_cancelled_error_from_middleware_does_not_kill_the_lane() -> None:
    async def scenario() -> None:
        cancelled_once = False

        async def flaky_tracing(ctx: Context, call_next: Next) -> None:
            nonlocal cancelled_once
            if not cancelled_once:
                cancelled_once = True
                other = asyncio.create_task(asyncio.sleep(10))
                other.cancel()
                await other  # escapes the chain: not the handler's failure
            await call_next(ctx)

        bus = EventBus(memory_url(), middleware=[flaky_tracing])
        handled: Collector[tuple[int, int]] = Collector()

        @bus.subscribe(Job, group="g")
        async def handle(event: Job, ctx: Context) -> None:
            handled.add((event.n, ctx.delivery.attempt))

        with Records("eventbus") as logs:
            async with bus:
                await bus.publish(Job(n=0))
                await bus.publish(Job(n=1))
                got = await handled.wait_count(2)
        assert sorted(got) == [(0, 2), (1, 1)]  # n=0 redelivered, the lane lived on
        assert any("CancelledError escaped" in m for m in logs.messages(logging.ERROR))

    run(scenario)


def test_health_before_start_and_when_the_adapter_check_raises() -> None:
    class Unhealthy(MemoryAdapter):
        async def health(self) -> HealthReport:
            raise OSError("health endpoint unreachable")

    async def scenario() -> None:
        bus = EventBus(Unhealthy(memory_url()))
        before = await bus.health()
        assert not before.ok and "not started" in before.detail
        async with bus:
            during = await bus.health()
        assert not during.ok and not during.adapter.ok
        assert "health endpoint unreachable" in during.detail

    run(scenario)
