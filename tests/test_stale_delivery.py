"""The bus drops a delivery that went stale while it waited in a worker lane.

An adapter marks a delivery stale when the broker took it back (a Kafka partition
revoked in a rebalance) before its handler started; running it anyway would repeat
work the partition's new owner also does.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from eventbus import Envelope, EventBus
from eventbus.adapter import Delivery


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
                await bus.adapter.publish(topic, [Envelope.create(
                    type="t", source="s", data=data)])
            await asyncio.wait_for(done.wait(), 10)
        assert sorted(ran) == [b'"first"', b'"last"']

    asyncio.run(asyncio.wait_for(scenario(), 30))
