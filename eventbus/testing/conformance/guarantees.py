"""Effectively-once handling with an idempotency store, and honest batch results."""

from __future__ import annotations

import asyncio

import pytest

from eventbus.errors import BatchPublishError, MessageTooLargeError
from eventbus.events import Message
from eventbus.middleware.idempotency import MemoryIdempotencyStore
from eventbus.testing.conformance._support import (
    QUIET,
    Case,
    Inbox,
    Ping,
    Recorder,
    case,
    on_topic,
)


class GuaranteeCases:
    """Duplicates are absorbed; partial batch failures say exactly what failed."""

    @case()
    async def test_idempotent_duplicate_ids(self, run: Case) -> None:
        """The same envelope published twice reaches the group twice, but with an
        idempotency store the handler runs once and both deliveries are acked."""
        event_cls = on_topic(Ping, run.topic())
        topic = event_cls.default_topic()
        recorder = Recorder()
        runs: Inbox[str] = Inbox("handler")
        bus = run.bus(idempotency=MemoryIdempotencyStore(), middleware=[recorder])

        @bus.subscribe(event_cls, group=run.group())
        async def handle(event: Ping) -> None:
            runs.add(event.note)

        await bus.start()
        publisher = await run.publisher()
        envelope = publisher.envelope_for(event_cls(seq=1, note="once"))
        await publisher.publish_envelopes(topic, [envelope])
        await publisher.publish_envelopes(topic, [envelope])
        await recorder.seen.wait(
            lambda _: recorder.settled(envelope.id) >= 2, "both copies to be acked"
        )
        assert runs.items == ["once"], f"handler ran {len(runs)} times for one event id"

    @case()
    async def test_idempotent_concurrent_duplicates(self, run: Case) -> None:
        """Duplicates arriving at the same time on parallel workers still run the
        handler once (claim before run); the copies are acked eventually."""
        event_cls = on_topic(Ping, run.topic())
        topic = event_cls.default_topic()
        recorder = Recorder()
        runs: Inbox[str] = Inbox("handler")
        bus = run.bus(idempotency=MemoryIdempotencyStore(), middleware=[recorder])

        @bus.subscribe(event_cls, group=run.group(), concurrency=4)
        async def handle(event: Ping) -> None:
            runs.add(event.note)
            await asyncio.sleep(0.3)  # keep the claim held while the copies arrive

        await bus.start()
        publisher = await run.publisher()
        envelope = publisher.envelope_for(event_cls(seq=1, note="once"))
        copies = 3
        await publisher.publish_envelopes(topic, [envelope] * copies)
        await recorder.seen.wait(
            lambda _: recorder.settled(envelope.id) >= copies, f"all {copies} copies acked"
        )
        assert runs.items == ["once"], f"handler ran {len(runs)} times for one event id"
        overlapped = [s for s in recorder.seen.items if s.outcome == "redeliver"]
        assert overlapped, "the copies never overlapped, so concurrency was not exercised"

    @case()
    async def test_batch_partial_failure_reported(self, run: Case) -> None:
        """``publish_many`` over two topics where one message is oversize raises
        BatchPublishError whose ``failures`` name that index and none of the other
        topic's; every index reported as succeeded arrives, the failed ones don't."""
        topic_a, topic_b = on_topic(Ping, run.topic()), on_topic(Ping, run.topic())
        got: Inbox[int] = Inbox("handler")
        consumer = run.bus()

        @consumer.subscribe(topic_a, topic_b, group=run.group())
        async def handle(event: Ping) -> None:
            got.add(event.seq)

        await consumer.start()
        oversize = "x" * (run.caps.max_message_bytes + 1)
        batch: list[Message] = [
            topic_a(seq=0),
            topic_b(seq=1, note=oversize),
            topic_a(seq=2),
            topic_b(seq=3),
            topic_a(seq=4),
        ]
        with pytest.raises(BatchPublishError) as raised:
            await (await run.publisher()).publish_many(batch)
        error = raised.value
        assert error.total == len(batch)
        assert 1 in error.failures, f"the oversize index is not reported: {error.failures}"
        assert isinstance(error.failures[1], MessageTooLargeError)
        assert not {0, 2, 4} & set(error.failures), "topic A's messages were reported failed"
        succeeded = list(error.succeeded)
        await got.wait(lambda items: set(items) >= set(succeeded), f"indexes {succeeded}")
        await asyncio.sleep(QUIET)  # a failed message must not show up late
        assert sorted(got.items) == succeeded
