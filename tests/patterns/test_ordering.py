"""Events out of order through a bus: an early event waits in the broker, not in memory,
so a restart loses nothing (issue #19, defect 17); the merged guard (Resequencer) on a
memory and a SQLite store, and the deprecated names."""

from __future__ import annotations

import asyncio
import importlib
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from eventbus import Context, Event, EventBus
from eventbus.backoff import Backoff
from eventbus.patterns.ordering import (
    EarlyEventError,
    MemorySequenceStore,
    Resequencer,
    SQLSequenceStore,
)
from eventbus.patterns.sql import Database
from tests.bus_support import memory_url

pytestmark = pytest.mark.asyncio

Service = Callable[[str, list[int]], EventBus]


class StatusChanged(Event, type="ordering-test.status", topic="ordering-test.status"):
    order_id: str
    version: int


async def applied_across_a_restart(service: Service, versions: list[int]) -> list[int]:
    """``versions[0]`` arrives, the service restarts, the rest arrive; returns what the
    projection applied, in order, once it applied every distinct version.
    ``service(url, applied)`` builds the service's bus, seeding its guard from
    ``applied`` (the projection's durable state)."""
    url = memory_url()
    applied: list[int] = []
    async with EventBus(url, source="orders") as producer:
        async with service(url, applied):
            await producer.publish(StatusChanged(order_id="o", version=versions[0]))
            await asyncio.sleep(0.2)  # handled (early), and must not be acked
        async with service(url, applied):
            for version in versions[1:]:
                await producer.publish(StatusChanged(order_id="o", version=version))
            for _ in range(500):
                if len(applied) >= len(set(versions)):
                    break
                await asyncio.sleep(0.01)
    return applied


async def test_the_old_ordering_guard_no_longer_acks_an_early_event() -> None:
    """OrderingGuard.accept in a bus handler held an early event in memory after the
    bus had acked it: a restart lost it for good."""
    with pytest.warns(DeprecationWarning, match="Resequencer"):
        guard_class = importlib.import_module("eventbus.patterns").OrderingGuard

    def service(url: str, applied: list[int]) -> EventBus:
        guard = guard_class()
        guard.seed("o", max(applied, default=0))
        bus = EventBus(url, source="orders-view")

        @bus.subscribe(StatusChanged, group="orders-view", start_from="earliest")
        async def project(event: StatusChanged) -> None:
            applied.extend(ready.version for ready in guard.accept("o", event.version, event))

        return bus

    assert await applied_across_a_restart(service, [2, 1]) == [1, 2]


async def test_the_resequencer_applies_in_order_across_a_restart_from_memory() -> None:
    def service(url: str, applied: list[int]) -> EventBus:
        sequencer = Resequencer("orders-view", MemorySequenceStore())
        bus = EventBus(url, source="orders-view")

        @bus.subscribe(StatusChanged, group="orders-view", start_from="earliest")
        async def project(event: StatusChanged, ctx: Context) -> None:
            if applied:  # the restarted service's memory store, seeded from its state
                await sequencer.seed("o", max(applied))
            await sequencer.apply("o", event.version, lambda: record(event), ctx=ctx)

        async def record(event: StatusChanged) -> None:
            applied.append(event.version)

        return bus

    assert await applied_across_a_restart(service, [3, 1, 2]) == [1, 2, 3]


async def test_the_resequencer_on_sqlite_waits_applies_and_keeps_stale(tmp_path: Path) -> None:
    async with await Database.connect(f"sqlite:///{tmp_path / 'o.db'}") as db:
        store = SQLSequenceStore(db)
        await store.setup()

        def service(url: str, applied: list[int]) -> EventBus:
            sequencer = Resequencer("orders-view", store, on_stale="keep")
            bus = EventBus(url, source="orders-view")

            @bus.subscribe(StatusChanged, group="orders-view", start_from="earliest")
            @sequencer(entity=lambda e: e.order_id, sequence=lambda e: e.version)
            async def project(event: StatusChanged, ctx: Context) -> None:
                applied.append(event.version)

            return bus

        # 3 early, restart, then 1, a duplicate 1, and 2: each applied once, in order.
        assert await applied_across_a_restart(service, [3, 1, 1, 2]) == [1, 2, 3]
        stale = await Resequencer("orders-view", store).stale_events()
        assert [(s.entity_id, s.sequence, s.applied) for s in stale] == [("o", 1, 1)]


async def test_an_early_event_is_handed_back_then_applied_when_waiting_is_over() -> None:
    sequencer = Resequencer(
        "view", wait=Backoff(initial=0.5, max_delay=0.5, jitter=0.0), max_waits=2
    )
    ran: list[int] = []

    async def run() -> None:
        ran.append(1)

    with pytest.raises(EarlyEventError) as early:
        await sequencer.apply("e", 3, run)
    assert (early.value.delay, early.value.expected) == (0.5, 1) and ran == []
    assert await sequencer.apply("e", 1, run) and ran == [1]
    skip = Resequencer("skip", on_gap="apply")
    assert await skip.apply("e", 5, run) and not await skip.apply("e", 4, run)
    assert skip.stale == 1


async def test_the_old_names_import_with_a_warning_naming_the_new_one() -> None:
    for module, name in [
        ("eventbus.patterns", "OrderingGuard"),
        ("eventbus.patterns", "SequenceGuard"),
        ("eventbus.patterns.ordering", "OrderingGuard"),
        ("eventbus.patterns.sagas", "SequenceGuard"),
        ("eventbus.patterns.sagas", "ParkedEvent"),
        ("eventbus.patterns.sagas.ordering", "SequenceGuard"),
    ]:
        with pytest.warns(DeprecationWarning, match=r"eventbus\.patterns\.ordering\."):
            getattr(importlib.import_module(module), name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.import_module("eventbus.patterns.sagas").MemorySequenceStore  # noqa: B018
    with pytest.warns(DeprecationWarning):
        old = importlib.import_module("eventbus.patterns.sagas").SequenceGuard
    guard = old("prices", on_stale="park")
    assert guard.on_gap == "apply" and guard.on_stale == "keep"
