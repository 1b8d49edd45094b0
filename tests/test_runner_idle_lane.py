"""Work without a key goes to the first idle worker, not to a guess.

A worker whose handler has finished but whose ack is still on its way to the
broker (an SQS delete, a Redis XACK) counted as busy as a worker whose handler is
stuck, and ties went to the first worker: with that one stuck, the next message
waited behind it although the other worker was about to be free.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from eventbus import Event, EventBus
from eventbus import lanes as lanes_module
from eventbus.memory_broker import MemoryDelivery
from tests.bus_support import Collector, memory_url, new_topic, run


class Step(Event, type="test.runner.idle-lane.step", topic="test-runner-idle-lane"):
    n: int


def test_next_message_waits_for_the_worker_finishing_its_ack_not_the_stuck_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    routed = 0
    third_routed = asyncio.Event()
    real_route = lanes_module.Lanes.route
    real_ack = MemoryDelivery._ack

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
    monkeypatch.setattr(MemoryDelivery, "_ack", ack)

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
