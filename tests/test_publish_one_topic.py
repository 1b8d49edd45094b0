"""publish_many of one class (one topic, the common case) takes a shorter path than a
batch over several topics: its failures must still name the right indexes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from eventbus import (
    BatchPublishError,
    Envelope,
    Event,
    EventBus,
    MemoryAdapter,
    MessageTooLargeError,
    PublishError,
)
from tests.bus_support import memory_url, read_topic, run


class Shipped(Event, type="test.one-topic.shipped", topic="test-one-topic-shipped"):
    parcel: str


class _RefusesBad(MemoryAdapter):
    """Confirms every message of a batch except those whose parcel is "bad"."""

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        bad: dict[int, Exception] = {
            i: PublishError("not confirmed")
            for i, e in enumerate(envelopes) if json.loads(e.data)["parcel"] == "bad"
        }
        await super().publish(topic, [e for i, e in enumerate(envelopes) if i not in bad])
        if bad:
            raise BatchPublishError("partial", bad, len(envelopes))


def test_one_topic_batch_refused_whole_names_every_index() -> None:
    async def scenario() -> None:
        bus = EventBus(f"{memory_url()}?max_message_bytes=400")
        async with bus:
            with pytest.raises(BatchPublishError) as info:
                await bus.publish_many([Shipped(parcel="a"), Shipped(parcel="x" * 500),
                                        Shipped(parcel="b")])
        error = info.value
        assert set(error.failures) == {0, 1, 2}
        assert list(error.succeeded) == []
        assert all(isinstance(e, MessageTooLargeError) for e in error.failures.values())
        assert len({e.id for e in error.envelopes}) == 3  # what to republish, same ids

    run(scenario)


def test_one_topic_batch_partly_confirmed_names_the_failed_indexes() -> None:
    async def scenario() -> None:
        url = memory_url()
        bus = EventBus(_RefusesBad(url))
        async with bus:
            with pytest.raises(BatchPublishError) as info:
                await bus.publish_many([Shipped(parcel="ok"), Shipped(parcel="bad"),
                                        Shipped(parcel="ok 2"), Shipped(parcel="bad")])
        stored = await read_topic(url, "test-one-topic-shipped", 2)
        assert set(info.value.failures) == {1, 3}
        assert list(info.value.succeeded) == [0, 2]
        sent = [info.value.envelopes[i].id for i in (0, 2)]
        assert [e.id for e in stored] == sent

    run(scenario)


def test_one_topic_batch_returns_the_envelopes_as_sent() -> None:
    async def scenario() -> None:
        async def stamp(topic: str, envelopes: Sequence[Envelope], call_next: Any) -> None:
            await call_next(topic, [e.evolve(subject="stamped") for e in envelopes])

        bus = EventBus(memory_url(), publish_middleware=[stamp])
        async with bus:
            sent = await bus.publish_many([Shipped(parcel="a"), Shipped(parcel="b")])
        assert [e.subject for e in sent] == ["stamped", "stamped"]

    run(scenario)
