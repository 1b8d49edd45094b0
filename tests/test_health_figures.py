"""What the metrics read from a running bus: each subscription's prefetch and how much
of it is in use, the broker's backlog when asked, and hooks run as the bus starts
and stops."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from eventbus import Event, EventBus, SubscriptionHealth
from tests.bus_support import Collector, memory_url, run


class Parcel(Event, type="test.health-figures.parcel", topic="test-health-figures"):
    n: int


def _only(healths: list[SubscriptionHealth]) -> SubscriptionHealth:
    [health] = healths
    return health


@pytest.mark.parametrize("concurrency", [1, 2])
def test_health_says_how_much_of_the_prefetch_is_in_use(concurrency: int) -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url(), source="hf", prefetch_per_worker=4)
        release = asyncio.Event()
        started = Collector[int]()

        @bus.subscribe(Parcel, group="g", concurrency=concurrency)
        async def handle(event: Parcel) -> None:
            started.add(event.n)
            await release.wait()

        async with bus:
            before = _only((await bus.health()).subscriptions)
            assert (before.prefetch, before.held) == (4 * concurrency, 0)
            await bus.publish_many([Parcel(n=n) for n in range(20)])
            await started.wait_count(concurrency)

            async def held() -> int:
                return _only((await bus.health()).subscriptions).held

            # Inline, the one running delivery; with lanes, everything prefetched.
            expected = 1 if concurrency == 1 else 4 * concurrency
            await until_async(held, expected)
            figures = _only((await bus.health(backlog=True)).subscriptions)
            # The broker holds the rest for the group (the adapter buffers nothing more).
            assert figures.backlog is not None and figures.backlog > 0
            assert _only((await bus.health()).subscriptions).backlog is None  # not asked
            release.set()
            await started.wait_count(20)
            await until_async(held, 0)
            assert _only((await bus.health(backlog=True)).subscriptions).backlog == 0

    run(scenario)


async def until_async(read: Callable[[], Awaitable[int]], expected: int) -> None:
    """Wait (bounded) until ``read()`` gives ``expected``: health signals no event."""

    async def poll() -> None:
        while await read() != expected:  # noqa: ASYNC110 - health signals no event
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), 5.0)


def test_a_batch_subscription_holds_what_it_collects() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url(), source="hf")
        release = asyncio.Event()
        batches = Collector[int]()

        @bus.subscribe(Parcel, group="g", batch=5, batch_timeout=0.05)
        async def handle(events: list[Parcel]) -> None:
            batches.add(len(events))
            await release.wait()

        async with bus:
            await bus.publish_many([Parcel(n=n) for n in range(5)])
            await batches.wait_count(1)
            assert _only((await bus.health()).subscriptions).held == 5
            release.set()

            async def held() -> int:
                return _only((await bus.health()).subscriptions).held

            await until_async(held, 0)

    run(scenario)


def test_hooks_run_when_the_bus_starts_and_stops() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url(), source="hf")
        calls: list[str] = []

        async def started() -> None:
            calls.append(f"started with {len((await bus.health()).subscriptions)}")

        async def stopping() -> None:
            calls.append(f"stopping with {len((await bus.health()).subscriptions)}")

        async def broken() -> None:
            raise RuntimeError("hook broke")

        @bus.subscribe(Parcel, group="g")
        async def handle(event: Parcel) -> None: ...

        bus.on_start(started)
        bus.on_stop(stopping)
        bus.on_stop(broken)  # logged; the bus stops all the same
        async with bus:
            assert calls == ["started with 1"]
        assert calls == ["started with 1", "stopping with 1"]
        assert not (await bus.health()).ok

        failing = EventBus(memory_url(), source="hf")
        failing.on_start(broken)
        with pytest.raises(RuntimeError, match="hook broke"):
            await failing.start()
        assert "the bus is not started" in (await failing.health()).detail

    run(scenario)
