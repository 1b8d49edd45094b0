"""The runner's lanes: where a delivery runs and when it does not.

Work without a key goes to the first idle worker, not to a guess: a worker whose
handler has finished but whose ack is still on its way to the broker (an SQS delete, a
Redis XACK) counted as busy as a worker whose handler is stuck, and ties went to the
first worker, so with that one stuck the next message waited behind it although the
other worker was about to be free. A delivery that went stale while it waited (the
broker took it back: a Kafka partition revoked in a rebalance) is dropped unrun, since
the partition's new owner runs it too. Concurrency 1 runs each delivery in the fetch
loop, with no lane queue, and must still leave the event loop to other tasks while a
backlog drains.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from eventbus import Envelope, Event, EventBus
from eventbus import lanes as lanes_module
from eventbus._memory_broker import MemoryDelivery
from eventbus.adapter import Delivery
from tests.bus_support import Collector, memory_url, new_topic, run


class Step(Event, type="test.runner.idle-lane.step", topic="test-runner-idle-lane"):
    n: int


def test_next_message_waits_for_the_worker_finishing_its_ack_not_the_stuck_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    routed = 0
    third_routed = asyncio.Event()
    real_route = lanes_module.Lanes.route
    real_ack = MemoryDelivery.ack

    def route(self: lanes_module.Lanes, delivery: Any) -> None:
        nonlocal routed
        real_route(self, delivery)
        routed += 1
        if routed == 3:
            third_routed.set()

    async def ack(self: MemoryDelivery) -> None:
        if self.envelope is not None and b'"n":1' in self.envelope.data:
            # Message 1's ack is still on its way when message 2 is dispatched.
            await third_routed.wait()
        await real_ack(self)

    monkeypatch.setattr(lanes_module.Lanes, "route", route)
    monkeypatch.setattr(MemoryDelivery, "ack", ack)  # the memory adapter has no _ack step

    async def scenario() -> None:
        url, topic = memory_url(), new_topic()
        bus = EventBus(url)
        release = asyncio.Event()
        started: Collector[int] = Collector()
        finished: Collector[int] = Collector()

        @bus.subscribe(topic, group="g", concurrency=2)
        async def handle(event: Step) -> None:
            started.add(event.n)
            if event.n == 0:
                await release.wait()
            finished.add(event.n)

        await bus.start()
        try:
            await bus.publish(Step(n=0), topic=topic)
            await started.wait_count(1)
            await bus.publish(Step(n=1), topic=topic)
            await finished.wait_count(1)
            await bus.publish(Step(n=2), topic=topic)
            assert await finished.wait_count(2) == [1, 2]  # while message 0 is stuck
            release.set()
            await finished.wait_count(3)
        finally:
            release.set()
            await bus.stop()

    run(scenario)


# -- a delivery gone stale in its lane ---------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 3], ids=["in-the-fetch-loop", "in-lanes"])
def test_a_stale_delivery_is_dropped_unrun(
    monkeypatch: pytest.MonkeyPatch, concurrency: int
) -> None:
    def stale(delivery: Delivery) -> bool:
        return delivery.envelope is not None and delivery.envelope.data == b'"stale"'

    monkeypatch.setattr(Delivery, "stale", property(stale))

    async def scenario() -> None:
        topic = f"t-{uuid.uuid4().hex[:8]}"
        bus = EventBus(f"memory://{uuid.uuid4()}")
        ran: list[bytes] = []
        done = asyncio.Event()

        @bus.subscribe(topic, group="g", concurrency=concurrency)
        async def handle(envelope: Envelope) -> None:
            ran.append(envelope.data)
            if envelope.data == b'"last"':
                done.set()

        async with bus:
            for data in (b'"first"', b'"stale"', b'"last"'):
                await bus.adapter.publish(topic, [Envelope.create(type="t", source="s", data=data)])
            await asyncio.wait_for(done.wait(), 10)
        assert sorted(ran) == [b'"first"', b'"last"']

    asyncio.run(asyncio.wait_for(scenario(), 30))


# -- concurrency 1: in the fetch loop, no lane queue -------------------------------------


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
