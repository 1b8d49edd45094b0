"""Batch handlers (``subscribe(..., batch=N)``): lists of events, settled together, and
what happens when some or all of a batch fail (see :mod:`eventbus.batching`)."""

from __future__ import annotations

import asyncio
import collections

from eventbus.batching import BatchItemFailed
from eventbus.envelope import Envelope
from eventbus.middleware.retry import RetryPolicy
from eventbus.testing.collector import Collector
from eventbus.testing.conformance._events import Ping, on_topic, record_batches
from eventbus.testing.conformance._support import QUIET, Case, case

# One in-process run per delivery, then broker redelivery: the budget is spent fast.
BATCH_RETRY = RetryPolicy(
    max_attempts=3, in_process_attempts=1, initial_delay=0.02, max_delay=0.2, jitter=0.0
)


def _seqs(dead: list[Envelope]) -> list[int]:
    return sorted(Ping.model_validate_json(e.data).seq for e in dead)


class BatchCases:
    """A batch handler sees every event once when it succeeds; a failure retries and
    dead-letters only the events that keep failing, one by one."""

    @case()
    async def test_batch_handler_gets_lists_settled_together(self, run: Case) -> None:
        """Every event arrives exactly once, in lists of at most ``batch``; once the
        batch returned nothing comes back (all were acked)."""
        event_cls = on_topic(Ping, run.topic())
        batches: Collector[list[int]] = Collector("batches")
        await run.consumer(
            event_cls, record_batches(batches), group=run.group(), batch=4, batch_timeout=0.05
        )
        count = run.count(10, minimum=6)
        await (await run.publisher()).publish_many([event_cls(seq=i) for i in range(count)])
        await batches.wait(lambda items: sum(map(len, items)) >= count, f"{count} events")
        await asyncio.sleep(QUIET)  # acked: nothing is redelivered
        seen = [seq for batch in batches.items for seq in batch]
        assert sorted(seen) == list(range(count)), f"events seen {seen}"
        assert all(1 <= len(batch) <= 4 for batch in batches.items), batches.items
        assert any(len(batch) > 1 for batch in batches.items), (
            f"no batch held more than one event: {batches.items}"
        )

    @case()
    async def test_partial_batch_runs_after_batch_timeout(self, run: Case) -> None:
        """A batch that never fills runs once ``batch_timeout`` has passed."""
        event_cls = on_topic(Ping, run.topic())
        batches: Collector[list[int]] = Collector("batches")
        await run.consumer(
            event_cls, record_batches(batches), group=run.group(), batch=1000, batch_timeout=0.1
        )
        await (await run.publisher()).publish_many([event_cls(seq=i) for i in range(3)])
        await batches.wait(lambda items: sum(map(len, items)) >= 3, "3 events")
        assert sorted(s for b in batches.items for s in b) == [0, 1, 2]

    @case()
    async def test_batch_item_failed_retries_and_dead_letters_only_those(self, run: Case) -> None:
        """``BatchItemFailed(indexes)``: the other events are acked and never run again;
        each named event is retried on its own (a list of one) and, failing every time,
        dead-lettered after ``max_attempts`` runs, the batch run counting as the first."""
        event_cls, _, group, dlq = await run.watched_ping()
        runs: collections.Counter[int] = collections.Counter()
        sizes: Collector[tuple[int, int]] = Collector("runs (seq, batch size)")
        bus = run.bus(retry=BATCH_RETRY)

        @bus.subscribe(event_cls, group=group, batch=5, batch_timeout=0.05)
        async def handle(events: list[Ping]) -> None:
            for event in events:
                runs[event.seq] += 1
                sizes.add((event.seq, len(events)))
            bad = [i for i, event in enumerate(events) if event.seq % 4 == 1]
            if bad:
                raise BatchItemFailed(bad, ValueError("refused by the store"))

        await bus.start()
        count = run.count(10, minimum=8)
        await (await run.publisher()).publish_many([event_cls(seq=i) for i in range(count)])
        failing = [i for i in range(count) if i % 4 == 1]
        dead = await dlq.wait_count(len(failing))
        await asyncio.sleep(QUIET)
        assert _seqs(dead) == failing
        assert all(e.extensions["dlqattempts"] == "3" for e in dead), [
            e.extensions["dlqattempts"] for e in dead
        ]
        assert all("refused by the store" in e.extensions["dlqreason"] for e in dead)
        for seq in range(count):
            expected = 3 if seq in failing else 1
            assert runs[seq] == expected, f"seq {seq} ran {runs[seq]} times: {dict(runs)}"
        for seq in failing:
            retries = [size for s, size in sizes.items if s == seq][1:]
            assert retries == [1, 1], f"seq {seq}: retries must run alone: {sizes.items}"

    @case()
    async def test_failing_batch_retries_each_event_on_its_own(self, run: Case) -> None:
        """A plain exception fails the whole batch: every event is retried on its own;
        those that succeed alone are acked once, the one that keeps failing is
        dead-lettered alone after ``max_attempts``."""
        event_cls, _, group, dlq = await run.watched_ping()
        handled: Collector[int] = Collector("handled")
        bus = run.bus(retry=BATCH_RETRY)

        @bus.subscribe(event_cls, group=group, batch=8, batch_timeout=0.05)
        async def handle(events: list[Ping]) -> None:
            if any(event.seq == 2 for event in events):
                raise RuntimeError("seq 2 breaks whatever batch it is in")
            for event in events:
                handled.add(event.seq)

        await bus.start()
        count = run.count(6, minimum=5)
        await (await run.publisher()).publish_many([event_cls(seq=i) for i in range(count)])
        good = [i for i in range(count) if i != 2]
        await handled.wait(lambda items: set(items) >= set(good), "every good event")
        (dead,) = await dlq.wait_count(1)
        await asyncio.sleep(QUIET)
        assert _seqs([dead]) == [2]
        assert dead.extensions["dlqattempts"] == "3"
        assert sorted(handled.items) == good, f"handled {handled.items}: each good one once"
