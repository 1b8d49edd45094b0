"""Runs (runs.py): the retry budget counts real handler runs.

The run counter's bound (recent ids remembered, old ones forgotten); and, through the
bus, no overflow on long policies, no inflation from deliveries that never reached the
handler, and the log saying the current attempt.
"""

from __future__ import annotations

import asyncio
import logging

from eventbus import Context, Envelope, Event, EventBus, MemoryIdempotencyStore, RetryPolicy
from eventbus.adapter import Delivery
from eventbus.middleware import Next
from eventbus.runs import RunCounter
from tests.bus_support import Collector, Records, dead_letters, memory_url, run


class _Delivery(Delivery):
    async def _ack(self) -> None: ...

    async def _nack(self, delay: float) -> None: ...

    async def _reject(self) -> None: ...


def _delivery(event_id: str, attempt: int = 1) -> Delivery:
    envelope = Envelope.create(type="t", source="s", id=event_id)
    return _Delivery(topic="t", group="g", envelope=envelope, attempt=attempt)


def test_the_last_limit_ids_keep_their_runs_and_older_ones_are_forgotten() -> None:
    counter = RunCounter(limit=4)
    counter.seen(_delivery("kept"))
    counter.ran("kept")
    counter.ran("kept")
    for n in range(3):  # "kept" is among the last 4 ids touched
        counter.seen(_delivery(f"other{n}"))
    assert counter.seen(_delivery("kept", attempt=2)) == 2  # two runs (forgotten: 1)
    counter.seen(_delivery("old"))
    for _ in range(3):
        counter.ran("old")
    for n in range(8):  # two limits' worth of newer ids
        counter.seen(_delivery(f"newer{n}"))
    # Forgotten (else 3 + 1): each earlier delivery counts as one run.
    assert counter.seen(_delivery("old", attempt=3)) == 2


def test_finished_starts_a_fresh_budget_but_keeps_deliveries_seen() -> None:
    counter = RunCounter(limit=4)
    counter.seen(_delivery("e"))
    counter.ran("e")
    counter.finished("e")
    # Second delivery of the same message (attempt 2): no runs since finished, and
    # the first delivery was seen here, so none is assumed unseen.
    assert counter.seen(_delivery("e", attempt=2)) == 0
    counter.ran("e")
    counter.not_ran("e")
    assert counter.seen(_delivery("e", attempt=3)) == 0


# -- the retry budget counts real runs ---------------------------------------------------

POLICY = RetryPolicy(max_attempts=3, in_process_attempts=3, initial_delay=0.01, jitter=0)


class Job(Event, type="test.retry.job", topic="test-retry-jobs"):
    n: int


def test_retry_policy_delay_is_capped_for_any_attempt_number() -> None:
    policy = RetryPolicy(max_attempts=10**6, initial_delay=0.001, max_delay=0.5, jitter=0)
    assert policy.delay(5000) == 0.5
    assert policy.delay(1) == 0.001
    assert RetryPolicy(initial_delay=0.0, max_delay=0.0, jitter=0).delay(5000) == 0.0


def test_a_practically_endless_policy_keeps_retrying_past_1025_attempts() -> None:
    async def scenario() -> None:
        url = memory_url()
        policy = RetryPolicy(
            max_attempts=1100, in_process_attempts=1100, initial_delay=0.0, max_delay=0.0, jitter=0
        )
        bus = EventBus(url, retry=policy)

        @bus.subscribe(Job, group="g")
        async def down(event: Job) -> None:
            raise ConnectionError("payment provider down")

        async with bus:
            await bus.publish(Job(n=1))
            (dead,) = await dead_letters(url, "test-retry-jobs", "g", 1)
        assert dead.extensions["dlqattempts"] == "1100"
        assert dead.extensions["dlqexception"] == "builtins.ConnectionError"

    run(scenario)


def test_a_run_cut_short_by_shutdown_does_not_count_as_an_attempt() -> None:
    async def scenario() -> None:
        url = memory_url()
        old = EventBus(url, retry=POLICY)
        started = asyncio.Event()

        @old.subscribe(Job, group="g")
        async def slow(event: Job) -> None:
            started.set()
            await asyncio.Event().wait()  # a deploy happens while this runs

        await old.start()
        await old.publish(Job(n=1))
        await asyncio.wait_for(started.wait(), 5)
        await old.stop(timeout=0.05)  # cancelled: the message goes back to the broker

        new = EventBus(url, retry=POLICY)
        runs: Collector[tuple[int, int]] = Collector()

        @new.subscribe(Job, group="g")
        async def failing(event: Job, ctx: Context) -> None:
            runs.add((ctx.delivery.attempt, ctx.attempt))
            raise RuntimeError("transient")

        async with new:
            (dead,) = await dead_letters(url, "test-retry-jobs", "g", 1)
        assert runs.items == [(2, 1), (2, 2), (2, 3)]
        assert dead.extensions["dlqattempts"] == "3"

    run(scenario)


def test_idempotency_bounces_of_a_duplicate_do_not_count_as_attempts() -> None:
    async def scenario() -> None:
        url = memory_url()
        deliveries: Collector[tuple[int, int]] = Collector()  # (delivery.attempt, offset) seen

        async def record(ctx: Context, call_next: Next) -> None:
            deliveries.add((ctx.delivery.attempt, int(ctx.delivery.message_id)))
            await call_next(ctx)

        bus = EventBus(url, retry=POLICY, idempotency=MemoryIdempotencyStore(), middleware=[record])
        runs: Collector[tuple[str, int]] = Collector()

        @bus.subscribe(Job, group="g", concurrency=2)
        async def handle(event: Job, ctx: Context) -> None:
            runs.add((ctx.delivery.message_id, ctx.attempt))
            if len(runs.items) == 1:
                # Hold the claim until the duplicate has bounced off it twice.
                async def bounced_twice() -> None:
                    while not any(attempt >= 3 for attempt, _ in deliveries.items):
                        await deliveries.wait_count(len(deliveries.items) + 1)

                await asyncio.wait_for(bounced_twice(), 5)
            raise RuntimeError("transient")

        async with bus:
            envelope = bus.envelope_for(Job(n=2))
            await bus.publish_envelopes("test-retry-jobs", [envelope, envelope])
            dead = await dead_letters(url, "test-retry-jobs", "g", 2)
        assert [d.extensions["dlqattempts"] for d in dead] == ["3", "3"]
        by_copy: dict[str, list[int]] = {}
        for message_id, attempt in runs.items:
            by_copy.setdefault(message_id, []).append(attempt)
        assert sorted(by_copy.values()) == [[1, 2, 3], [1, 2, 3]]

    run(scenario)


def test_the_context_logger_reports_the_current_attempt() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url(), retry=POLICY)
        done: Collector[int] = Collector()

        @bus.subscribe(Job, group="g")
        async def handle(event: Job, ctx: Context) -> None:
            ctx.logger.info("handling attempt %d", ctx.attempt)
            if ctx.attempt < 3:
                raise RuntimeError("not yet")
            done.add(ctx.attempt)

        with Records("eventbus.handler") as logs:
            async with bus:
                await bus.publish(Job(n=1))
                await done.wait_count(1)
        handling = [
            (r.getMessage(), getattr(r, "attempt", None))
            for r in logs.records
            if r.levelno == logging.INFO and r.getMessage().startswith("handling")
        ]
        assert handling == [
            ("handling attempt 1", 1),
            ("handling attempt 2", 2),
            ("handling attempt 3", 3),
        ]
        failed = [getattr(r, "attempt", None) for r in logs.records if "failed" in r.getMessage()]
        assert failed == [1, 2]

    run(scenario)
