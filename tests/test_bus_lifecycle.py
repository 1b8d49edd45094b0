"""Lifecycle: start and stop are idempotent and wait for handlers, the shutdown timeout,
SIGTERM, and a start that fails midway."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from eventbus import BrokerConnectionError, Context, EventBus, MemoryAdapter
from eventbus.adapter import SubscribeOptions, Subscription
from tests.bus_support import WAIT, Collector, OrderPlaced, PaymentTaken, memory_url, run


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
        started: Collector[int] = Collector()

        @bus.subscribe(OrderPlaced, group="g")
        async def stuck(event: OrderPlaced, ctx: Context) -> None:
            started.add(ctx.delivery.attempt)
            await asyncio.Event().wait()

        await bus.start()
        await bus.publish(OrderPlaced(order_id="stuck"))
        await started.wait_count(1)
        await bus.stop()

        second = EventBus(url)
        again: Collector[int] = Collector()

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
        seen: Collector[str] = Collector()
        finished: Collector[str] = Collector()

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
        seen: Collector[str] = Collector()

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


class ClosingSpy(MemoryAdapter):
    """A memory adapter that counts its close() calls."""

    closes = 0

    async def close(self) -> None:
        type(self).closes += 1
        await super().close()


def test_a_bus_never_started_closes_what_its_publish_opened_when_the_loop_ends() -> None:
    """Nobody stops a bus that was never started: the adapter its publish connected is
    closed as asyncio.run shuts down (a real client left open leaves tasks pending)."""

    class Spy(ClosingSpy):
        closes = 0

    async def script() -> None:
        bus = EventBus(Spy(memory_url()))
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.publish(OrderPlaced(order_id="2"))
        assert Spy.closes == 0  # still usable until the loop ends

    asyncio.run(script())
    assert Spy.closes == 1


def test_stop_closes_the_adapter_of_a_bus_that_only_published() -> None:
    class Spy(ClosingSpy):
        closes = 0

    async def script() -> None:
        bus = EventBus(Spy(memory_url()))
        await bus.stop()  # nothing to close yet
        assert Spy.closes == 0
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.stop()
        assert Spy.closes == 1

    asyncio.run(script())
    assert Spy.closes == 1  # not closed a second time when the loop ends


def test_a_bus_that_published_before_start_is_closed_once_by_its_stop() -> None:
    class Spy(ClosingSpy):
        closes = 0

    async def script() -> None:
        bus = EventBus(Spy(memory_url()))
        await bus.publish(OrderPlaced(order_id="1"))
        async with bus:
            await bus.publish(OrderPlaced(order_id="2"))
        assert Spy.closes == 1

    asyncio.run(script())
    assert Spy.closes == 1
