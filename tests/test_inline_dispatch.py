"""Concurrency 1 runs each delivery in the fetch loop (no lane queue): it must still
leave the event loop to other tasks while a backlog drains."""

from __future__ import annotations

import asyncio
import uuid

from eventbus import Event, EventBus


class Tock(Event, type="test.inline.tock", topic="test.inline.tocks"):
    n: int = 0


def test_a_draining_backlog_does_not_starve_other_tasks() -> None:
    async def scenario() -> None:
        bus = EventBus(f"memory://{uuid.uuid4()}")
        handled = 0
        ticks_when_done: list[int] = []
        ticks = 0
        done = asyncio.Event()
        count = 2000

        @bus.subscribe(Tock, group="g")
        async def handle(event: Tock) -> None:  # never suspends
            nonlocal handled
            handled += 1
            if handled == count:
                ticks_when_done.append(ticks)
                done.set()

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        async with bus:
            await bus.publish_many([Tock(n=i) for i in range(count)])
            task = asyncio.create_task(ticker())
            await asyncio.wait_for(done.wait(), 10)
            task.cancel()
        # The ticker got turns while the 2000 were handled, not only after.
        assert ticks_when_done[0] >= count // 100, ticks_when_done

    asyncio.run(scenario())
