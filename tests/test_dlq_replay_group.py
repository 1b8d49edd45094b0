"""Replaying a dead letter reaches the group that failed it, not every group again."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter

import pytest

from eventbus import DeadLetters, Envelope, EventBus, RetryPolicy
from eventbus.adapter import Adapter, ReadRecord
from eventbus.deadletter import dead_letter_envelope, dlq_topic
from eventbus.errors import UnsupportedOperationError
from eventbus.memory import MemoryAdapter

NO_RETRY = RetryPolicy(max_attempts=1, initial_delay=0.0, jitter=0.0)


class QueueLike(MemoryAdapter):
    """A broker that cannot browse without consuming (SQS, RabbitMQ): DeadLetters reads
    the DLQ as its replay group."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.capabilities = dataclasses.replace(self.capabilities, browse=False)

    async def read(self, topic: str, *, limit: int | None = None) -> list[ReadRecord]:
        raise UnsupportedOperationError("cannot browse")


async def _scenario(to_group: bool | None,
                    adapter_cls: type[MemoryAdapter] = MemoryAdapter) -> Counter[str]:
    """Groups "billing" (fails once) and "audit" (fine) both take one event; the
    billing failure is dead-lettered, then replayed. Returns handler runs per group."""
    url, topic = f"memory://{uuid.uuid4().hex}", f"orders-{uuid.uuid4().hex[:8]}"
    runs: Counter[str] = Counter()
    billed = asyncio.Event()
    broken = True
    bus = EventBus(adapter_cls(url), retry=NO_RETRY)

    @bus.subscribe(topic, group="billing")
    async def bill(envelope: Envelope) -> None:
        runs["billing"] += 1
        if broken:
            raise ValueError("card declined")
        billed.set()

    @bus.subscribe(topic, group="audit")
    async def audit(envelope: Envelope) -> None:
        runs["audit"] += 1

    dead_lettered = asyncio.Event()

    @bus.subscribe(dlq_topic(topic, "billing"), group="watch")
    async def watch(envelope: Envelope) -> None:
        dead_lettered.set()

    async with bus:
        await bus.adapter.publish(topic, [Envelope.create(type="t", source="s")])
        dead = DeadLetters(bus.adapter)
        await asyncio.wait_for(dead_lettered.wait(), 5)
        broken = False
        assert await dead.replay(topic, "billing", to_group=to_group) == 1
        await asyncio.wait_for(billed.wait(), 5)
        await asyncio.sleep(0.1)  # room for a wrong extra run in "audit" to show
    return runs


def test_replay_goes_to_the_failed_group_only_where_the_broker_can_route_to_it() -> None:
    assert asyncio.run(_scenario(None)) == {"billing": 2, "audit": 1}


def test_replay_to_the_whole_topic_reaches_every_group_again() -> None:
    assert asyncio.run(_scenario(False)) == {"billing": 2, "audit": 2}


@pytest.mark.parametrize(("to_group", "runs"), [(None, {"billing": 2, "audit": 1}),
                                                (False, {"billing": 2, "audit": 2})])
def test_a_queue_brokers_replay_routes_as_a_browsing_one(
        to_group: bool | None, runs: dict[str, int]) -> None:
    """Read by consuming the DLQ (no browsing), a replay still goes to the failed group
    where the broker can route to it. Besides sparing the other groups, this keeps a
    FIFO broker's dedupe window (SQS FIFO, 5 minutes, keyed by the event id for a plain
    publish) from dropping a replay of an event published a moment ago."""
    assert asyncio.run(_scenario(to_group, QueueLike)) == runs


def test_insisting_on_the_group_where_the_broker_cannot_route_is_an_error() -> None:
    class NoGroupRoute(MemoryAdapter):
        def __init__(self, url: str) -> None:
            super().__init__(url)
            self.capabilities = dataclasses.replace(self.capabilities, group_route=False)

        async def publish_to_group(self, topic: str, group: str, envelopes: object) -> None:
            await Adapter.publish_to_group(self, topic, group, [])  # the base: unsupported

    async def scenario() -> None:
        adapter = NoGroupRoute(f"memory://{uuid.uuid4().hex}")
        await adapter.connect()
        original = Envelope.create(type="t", source="s")
        letter = dead_letter_envelope(original, reason="boom", topic="orders",
                                      group="billing", attempts=1)
        await adapter.publish(dlq_topic("orders", "billing"), [letter])
        with pytest.raises(UnsupportedOperationError, match="one group"):
            await DeadLetters(adapter).replay("orders", "billing", to_group=True)
        # Left to choose, the replay falls back to the whole topic.
        assert await DeadLetters(adapter).replay("orders", "billing") == 1
        records = await adapter.read("orders")
        assert [r.envelope.id for r in records if r.envelope] == [original.id]
        await adapter.close()

    asyncio.run(scenario())
