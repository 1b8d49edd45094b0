"""Graceful shutdown starts nothing new (#25): once ``stop()`` is called, the handlers
already running finish, and work that was fetched but not started (queued on a lane,
pooled, or collected into a batch) is handed back to the broker instead of started.

Before the fix, ``Lanes.stop`` ran every queued and pooled delivery within the
shutdown timeout: a burst left dozens of handlers starting after SIGTERM, and the
last of them was cut off when the timeout ran out.
"""

from __future__ import annotations

import asyncio

import pytest

from eventbus import EventBus
from tests.bus_support import WAIT, Collector, OrderPlaced, memory_url, run

COUNT = 40


@pytest.mark.parametrize(
    "options",
    [
        {"concurrency": 4},  # keyless: the idle pool
        {"concurrency": 4, "ordered": True},  # keyed: per-key lanes
        {"concurrency": 2, "batch": 5, "batch_timeout": 30.0},  # a batch being collected
    ],
    ids=["pool", "keyed-lanes", "batch"],
)
def test_stop_runs_nothing_fetched_after_it_and_loses_nothing(options: dict[str, object]) -> None:
    async def scenario() -> None:
        url = memory_url()
        bus = EventBus(url, shutdown_timeout=5.0)
        started: Collector[str] = Collector()
        finished: Collector[str] = Collector()
        stopping = asyncio.Event()
        late: list[str] = []
        batched = "batch" in options

        async def work(order_id: str, first: bool = True) -> None:
            if stopping.is_set() and first:
                late.append(order_id)
            started.add(order_id)
            await asyncio.sleep(0.2)
            finished.add(order_id)

        if batched:

            @bus.subscribe(OrderPlaced, group="g", **options)  # type: ignore[arg-type]
            async def handle_batch(events: list[OrderPlaced]) -> None:
                # One handler run per batch: only its start counts as starting.
                for index, event in enumerate(events):
                    await work(event.order_id, first=index == 0)
        else:

            @bus.subscribe(OrderPlaced, group="g", **options)  # type: ignore[arg-type]
            async def handle(event: OrderPlaced) -> None:
                await work(event.order_id)

        await bus.start()
        async with EventBus(url) as producer:
            for i in range(COUNT):
                await producer.publish(OrderPlaced(order_id=str(i)), key=f"k{i % 8}")
        await started.wait_count(2)
        stopping.set()
        running = set(started.items) - set(finished.items)
        await bus.stop()
        assert late == [], f"{len(late)} handler run(s) started after stop(): {late[:10]}"
        # What was running when stop() was called was let finish.
        assert running <= set(finished.items)

        # Nothing is lost: what was not started comes again to the next consumer.
        second = EventBus(url)
        again: Collector[str] = Collector()

        @second.subscribe(OrderPlaced, group="g")
        async def collect(event: OrderPlaced) -> None:
            again.add(event.order_id)

        async with second:
            expected = {str(i) for i in range(COUNT)} - set(finished.items)
            deadline = asyncio.get_running_loop().time() + WAIT * 2
            while not expected <= set(again.items):
                assert asyncio.get_running_loop().time() < deadline, (
                    f"never handled: {sorted(expected - set(again.items))[:10]}"
                )
                await asyncio.sleep(0.02)

    run(scenario)
