"""Effectively-once handling with an idempotency store, and honest batch results."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from eventbus.context import Context
from eventbus.envelope import Envelope
from eventbus.errors import BatchPublishError, MessageTooLargeError
from eventbus.events import Message
from eventbus.middleware.idempotency import MemoryIdempotencyStore
from eventbus.middleware.retry import RetryPolicy
from eventbus.testing.collector import Collector
from eventbus.testing.conformance._events import Ping, on_topic, record_seqs
from eventbus.testing.conformance._support import QUIET, Capability, Case, Recorder, case, requires


def _reasons(dlq: Collector[Envelope]) -> list[str]:
    return [e.extensions.get("dlqreason", "?") for e in dlq.items]


class _FlakyStore(MemoryIdempotencyStore):
    """A store whose first ``failures`` claims fail as if its server were down."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.failed = 0

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        if self.failed < self.failures:
            self.failed += 1
            raise ConnectionError("idempotency store unreachable (injected outage)")
        return await super().claim(*args, **kwargs)


class _ShortLeaseStore(MemoryIdempotencyStore):
    """A store granting every claim a short lease, whatever the middleware asks for."""

    def __init__(self, lease: float) -> None:
        super().__init__()
        self.lease = lease

    async def claim(self, key: str, lease: float, *args: Any, **kwargs: Any) -> Any:
        return await super().claim(key, self.lease, *args, **kwargs)


class GuaranteeCases:
    """Duplicates are absorbed; partial batch failures say exactly what failed."""

    @case(requires(Capability.no_dedupe_window, "the case publishes one event id twice"))
    async def test_idempotent_duplicate_ids(self, run: Case) -> None:
        """The same envelope published twice reaches the group twice, but with an
        idempotency store the handler runs once, both deliveries are acked and the
        duplicate is not dead-lettered (a skipped duplicate is a success)."""
        event_cls, topic, group, dlq = await run.watched_ping()
        recorder = Recorder()
        runs: Collector[str] = Collector("handler")
        bus = run.bus(idempotency=MemoryIdempotencyStore(), middleware=[recorder])

        @bus.subscribe(event_cls, group=group)
        async def handle(event: Ping) -> None:
            runs.add(event.note)

        await bus.start()
        publisher = await run.publisher()
        envelope = publisher.envelope_for(event_cls(seq=1, note="once"))
        await publisher.publish_envelopes(topic, [envelope])
        await runs.wait_count(1)
        await publisher.publish_envelopes(topic, [envelope])
        await recorder.seen.wait(
            lambda _: recorder.settled(envelope.id) >= 2, "both copies to be acked"
        )
        await asyncio.sleep(QUIET)  # a dead letter would arrive within this window
        assert runs.items == ["once"], f"handler ran {len(runs)} times for one event id"
        assert not dlq.items, f"a duplicate was dead-lettered: {_reasons(dlq)}"

    @case(requires(Capability.no_dedupe_window, "the case publishes one event id twice"))
    async def test_idempotent_concurrent_duplicates(self, run: Case) -> None:
        """Duplicates arriving at the same time on parallel workers still run the
        handler once (claim before run); the copies are acked eventually and none
        is dead-lettered."""
        event_cls, topic, group, dlq = await run.watched_ping()
        recorder = Recorder()
        runs: Collector[str] = Collector("handler")
        bus = run.bus(idempotency=MemoryIdempotencyStore(), middleware=[recorder])

        @bus.subscribe(event_cls, group=group, concurrency=4)
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
        await asyncio.sleep(QUIET)  # a dead letter would arrive within this window
        assert runs.items == ["once"], f"handler ran {len(runs)} times for one event id"
        assert not dlq.items, f"a duplicate was dead-lettered: {_reasons(dlq)}"
        overlapped = [s for s in recorder.seen.items if s.outcome == "redeliver"]
        assert overlapped, "the copies never overlapped, so concurrency was not exercised"

    @case()
    async def test_idempotent_release_on_failure(self, run: Case) -> None:
        """A handler failing while it holds the claim releases it: the retry (in
        process, then a redelivery) claims again and succeeds; exactly one run
        succeeds, nothing is dead-lettered, and a later duplicate is skipped."""
        event_cls, topic, group, dlq = await run.watched_ping()
        policy = RetryPolicy(max_attempts=3, in_process_attempts=1, initial_delay=0.02, jitter=0.0)
        attempts: Collector[int] = Collector("attempts")
        succeeded: Collector[int] = Collector("successes")
        bus = run.bus(idempotency=MemoryIdempotencyStore())

        @bus.subscribe(event_cls, group=group, retry=policy)
        async def handle(event: Ping, ctx: Context) -> None:
            attempts.add(ctx.attempt)
            if ctx.attempt == 1:
                raise RuntimeError("the first run fails and must release its claim")
            succeeded.add(ctx.attempt)

        await bus.start()
        publisher = await run.publisher()
        envelope = publisher.envelope_for(event_cls(seq=1))
        await publisher.publish_envelopes(topic, [envelope])
        await succeeded.wait_count(1)
        await publisher.publish_envelopes(topic, [envelope])  # now a duplicate of done work
        await asyncio.sleep(QUIET)
        assert attempts.items == [1, 2], f"handler runs: {attempts.items}"
        assert succeeded.items == [2]
        assert not dlq.items, f"dead-lettered: {_reasons(dlq)}"

    @case(requires(Capability.redelivery, "the message must come back after the outage"))
    async def test_idempotency_store_outage_redelivers(self, run: Case) -> None:
        """An idempotency store failing during ``claim`` is an infrastructure failure,
        not a handler failure: the message is redelivered (never dead-lettered) and
        handled exactly once when the store answers again."""
        event_cls, _, group, dlq = await run.watched_ping()
        store = _FlakyStore(failures=2)
        runs: Collector[int] = Collector("handler")
        await run.consumer(
            event_cls, record_seqs(runs), group=group, bus=run.bus(idempotency=store)
        )
        await (await run.publisher()).publish(event_cls(seq=7))
        await runs.wait_count(1)
        await asyncio.sleep(QUIET)
        assert store.failed == 2, "the store outage was not exercised"
        assert runs.items == [7], f"handler runs: {runs.items}"
        assert not dlq.items, f"dead-lettered during a store outage: {_reasons(dlq)}"

    @case(
        requires(Capability.redelivery, "the held copy comes back to find the lease expired"),
        requires(Capability.no_dedupe_window, "the case publishes one event id twice"),
    )
    async def test_idempotency_expired_lease_can_be_taken(self, run: Case) -> None:
        """A claim whose lease has expired (its handler is stuck) no longer blocks a
        redelivery: the copy that comes back after the lease claims and runs while
        the first run is still stuck, and nothing is dead-lettered."""
        event_cls, topic, group, dlq = await run.watched_ping()
        unstick = asyncio.Event()
        started: Collector[int] = Collector("started")
        finished: Collector[int] = Collector("finished")
        bus = run.bus(idempotency=_ShortLeaseStore(lease=0.3))

        @bus.subscribe(event_cls, group=group, concurrency=2)
        async def handle(event: Ping) -> None:
            number = len(started) + 1
            started.add(number)
            if number == 1:
                await unstick.wait()  # the first run outlives its lease
            finished.add(number)

        await bus.start()
        publisher = await run.publisher()
        envelope = publisher.envelope_for(event_cls(seq=1))
        await publisher.publish_envelopes(topic, [envelope, envelope])
        await started.wait_count(2)  # the second copy claimed after the lease expired
        assert 1 not in finished.items, "the first run ended before the second claimed"
        unstick.set()
        await finished.wait(lambda items: sorted(items) == [1, 2], "both runs to end")
        await asyncio.sleep(QUIET)
        assert not dlq.items, f"dead-lettered: {_reasons(dlq)}"

    @case()
    async def test_batch_partial_failure_reported(self, run: Case) -> None:
        """``publish_many`` over two topics where one message is oversize raises
        BatchPublishError whose ``failures`` name that index and none of the other
        topic's; every index reported as succeeded arrives, the failed ones don't."""
        topic_a, topic_b = on_topic(Ping, run.topic()), on_topic(Ping, run.topic())
        got: Collector[int] = Collector("handler")
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
