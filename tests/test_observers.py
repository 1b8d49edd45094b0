"""Observing layers (``Observer``: tracing, metrics) see every handling with its outcome
and what happened on the way (retries, a redelivery, a dead letter), on the fused path
and on a composed chain alike, plus batch calls and undecodable messages; and an
observer that breaks changes nothing about how a message is handled."""

from __future__ import annotations

import contextvars
import logging
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import pytest

from eventbus import BatchItemFailed, Context, Event, EventBus, RetryPolicy
from eventbus.adapter import Delivery, RawMessage
from eventbus.incidents import Incident, incidents
from eventbus.middleware import Next, RedeliveryRequested
from eventbus.middleware.base import Observer
from tests.bus_support import Collector, Records, dlq_size, memory_url, run, until

WATCHING: contextvars.ContextVar[str | None] = contextvars.ContextVar("watching", default=None)


class Shipped(Event, type="test.observers.shipped", topic="test-observers-shipped"):
    n: int


@dataclass
class Seen:
    """One handling as an observer saw it end."""

    n: int | None
    failure: BaseException | None
    incidents: list[Incident]
    result: object


@dataclass
class Recorder(Observer):
    seen: Collector[Seen] = field(default_factory=Collector)
    batches: list[tuple[int, set[int], BaseException | None]] = field(default_factory=list)
    undecodable_seen: list[tuple[str, bool]] = field(default_factory=list)

    def begin(self, ctx: Context) -> object:
        return WATCHING.set(f"watching {ctx.envelope.id}")

    def end(self, ctx: Context, mark: object, failure: BaseException | None) -> None:
        assert isinstance(mark, contextvars.Token)
        WATCHING.reset(mark)
        n = getattr(ctx.event, "n", None)
        self.seen.add(Seen(n, failure, list(incidents(ctx)), ctx.result))

    def begin_batch(self, contexts: Sequence[Context]) -> object:
        return len(contexts)

    def end_batch(
        self,
        contexts: Sequence[Context],
        mark: object,
        failed: Collection[int],
        failure: BaseException | None,
    ) -> None:
        assert mark == len(contexts)
        self.batches.append((len(contexts), set(failed), failure))

    def undecodable(self, delivery: Delivery, dead_lettered: bool) -> None:
        self.undecodable_seen.append((delivery.topic, dead_lettered))


async def passing(ctx: Context, call_next: Next) -> None:
    """Declares nothing: a chain holding it runs composed."""
    await call_next(ctx)


CHAINS = {"fused": (), "composed": (passing,)}


@pytest.mark.parametrize("chain", CHAINS)
def test_an_observer_sees_success_retries_redelivery_and_the_dead_letter(chain: str) -> None:
    async def scenario() -> None:
        recorder = Recorder()
        url = memory_url()
        bus = EventBus(
            url,
            source="obs",
            middleware=[recorder, *CHAINS[chain]],
            retry=RetryPolicy(max_attempts=3, in_process_attempts=2, initial_delay=0.0, jitter=0.0),
        )
        runs: dict[int, int] = {}
        inside: list[str | None] = []

        @bus.subscribe(Shipped, group="g")
        async def handle(event: Shipped) -> str:
            runs[event.n] = runs.get(event.n, 0) + 1
            inside.append(WATCHING.get())
            if event.n == 2 and runs[2] == 1:
                raise ValueError("first run of 2 fails")
            if event.n == 3:
                raise ValueError(f"run {runs[3]} of 3 fails")
            return f"done {event.n}"

        async with bus:
            for n in (1, 2, 3):
                await bus.publish(Shipped(n=n))
            seen = await recorder.seen.wait_count(4)
            await until(lambda: dlq_size(url, Shipped.default_topic(), "g") == 1)

        by_n: dict[int | None, list[Seen]] = {}
        for item in seen:
            by_n.setdefault(item.n, []).append(item)
        [ok] = by_n[1]
        assert ok.failure is None and ok.incidents == [] and ok.result == "done 1"
        [retried] = by_n[2]
        assert retried.failure is None and retried.result == "done 2"
        assert [(i.kind, i.attempt, i.reason) for i in retried.incidents] == [
            ("retry", 1, "ValueError: first run of 2 fails")
        ]
        first, second = by_n[3]
        # Two runs in process, then the broker is asked to redeliver ...
        assert isinstance(first.failure, RedeliveryRequested)
        assert [(i.kind, i.attempt) for i in first.incidents] == [("retry", 1), ("redelivery", 2)]
        # ... and the third run (max_attempts) is the last: dead-lettered, acked.
        assert second.failure is None
        [dead] = second.incidents
        assert (dead.kind, dead.attempt, dead.error_type) == ("dead_letter", 3, "ValueError")
        assert dead.target == f"{Shipped.default_topic()}.g.dlq"
        assert dead.reason == "ValueError: run 3 of 3 fails"
        # The handler ran inside what begin() set up (a span would be current).
        assert all(value is not None and value.startswith("watching") for value in inside)

    run(scenario)


def test_an_observer_behind_another_layer_watches_through_its_own_call() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        bus = EventBus(memory_url(), source="obs", middleware=[passing, recorder])

        @bus.subscribe(Shipped, group="g")
        async def handle(event: Shipped) -> None:
            assert WATCHING.get() is not None

        async with bus:
            await bus.publish(Shipped(n=1))
            [seen] = await recorder.seen.wait_count(1)
        assert seen.failure is None and seen.n == 1

    run(scenario)


def test_a_poison_message_is_seen_dead_lettered() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        url = memory_url()
        bus = EventBus(url, source="obs", middleware=[recorder])
        topic = f"poison-{uuid.uuid4()}"

        @bus.subscribe(topic, group="g")
        async def handle(event: Shipped) -> None:
            raise AssertionError("never runs")

        async with bus:
            await bus.adapter.publish(
                topic, [bus.envelope_for(Shipped(n=1)).evolve(type="test.observers.unknown")]
            )
            [seen] = await recorder.seen.wait_count(1)
            raw = f"raw-{uuid.uuid4()}"
            bus2 = EventBus(url, source="obs", middleware=[recorder])

            @bus2.subscribe(raw, group="g")
            async def never(event: Shipped) -> None:
                raise AssertionError("never runs")

            async with bus2:
                await bus2.adapter.publish_raw(raw, RawMessage(b"not a cloudevent", {}))
                await until(lambda: recorder.undecodable_seen != [])
        [dead] = seen.incidents
        assert dead.kind == "dead_letter" and dead.error_type == "SchemaError"
        assert recorder.undecodable_seen == [(raw, True)]

    run(scenario)


def test_a_batch_call_is_watched_and_its_failed_events_alone() -> None:
    async def scenario() -> None:
        recorder = Recorder()
        bus = EventBus(
            memory_url(),
            source="obs",
            middleware=[recorder],
            retry=RetryPolicy(max_attempts=2, initial_delay=0.0, jitter=0.0),
        )
        done = Collector[int]()

        @bus.subscribe(Shipped, group="g", batch=4, batch_timeout=0.2)
        async def handle(events: list[Shipped]) -> None:
            if len(events) > 1:
                raise BatchItemFailed([1])
            done.add(events[0].n)

        async with bus:
            await bus.publish_many([Shipped(n=n) for n in range(4)])
            await done.wait_count(1)
            [alone] = await recorder.seen.wait_count(1)
        assert recorder.batches[0][:2] == (4, {1})
        assert isinstance(recorder.batches[0][2], BatchItemFailed)
        assert alone.n == 1 and alone.failure is None

    run(scenario)


class BrokenBegin(Observer):
    def begin(self, ctx: Context) -> object:
        raise RuntimeError("begin is broken")

    def end(self, ctx: Context, mark: object, failure: BaseException | None) -> None:
        raise AssertionError("end() is not called after a begin() that raised")


class BrokenEnd(Observer):
    def end(self, ctx: Context, mark: object, failure: BaseException | None) -> None:
        raise RuntimeError("end is broken")


@pytest.mark.parametrize(
    "observers",
    [
        [BrokenBegin],
        [BrokenEnd],
        [BrokenBegin, BrokenEnd],
        [BrokenEnd, BrokenBegin],
        [BrokenEnd, BrokenBegin, BrokenEnd],
    ],
    ids=["begin", "end", "both", "both, inner begin", "three"],
)
def test_a_broken_observer_changes_nothing(observers: list[type[Observer]]) -> None:
    async def scenario() -> None:
        url = memory_url()
        bus = EventBus(url, source="obs", middleware=[kind() for kind in observers])
        handled = Collector[int]()

        @bus.subscribe(Shipped, group="g")
        async def handle(event: Shipped) -> None:
            handled.add(event.n)

        with Records("eventbus.runner") as records:
            async with bus:
                await bus.publish(Shipped(n=1))
                await handled.wait_count(1)
                await until(lambda: len(records.messages(logging.ERROR)) >= len(observers))
        errors = records.messages(logging.ERROR)
        # Once each, and no end() after its begin() raised.
        assert sum("failed in begin" in m for m in errors) == observers.count(BrokenBegin)
        assert sum("failed in end" in m for m in errors) == observers.count(BrokenEnd)
        # Handled and acked as without the observer: not redelivered, not dead-lettered.
        assert not any("could not be handled" in m for m in errors)
        assert handled.items == [1] and dlq_size(url, Shipped.default_topic(), "g") == 0

    run(scenario)
