"""The resequencer with ``on_gap="apply"`` (what SequenceGuard was), fed deliberately
reordered events through a bus: stale ones are ignored or kept, newer ones applied.
``check_*`` bodies run on PostgreSQL too."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from eventbus import Context, Event, EventBus
from eventbus.patterns.ordering import (
    EarlyEventError,
    MemorySequenceStore,
    Resequencer,
    SequenceStore,
    SQLSequenceStore,
)
from eventbus.patterns.sql import Database
from eventbus.testing import TestBus


class StockLevelChanged(
    Event, type="test.ordering.stock_level_changed", topic="test-ordering", register=False
):
    sku: str
    version: int
    level: int


# Each sku's versions, in the order they are published (the broker keeps that order).
REORDERED = [
    ("mug", 1),
    ("mug", 3),
    ("lamp", 2),
    ("mug", 2),
    ("mug", 3),
    ("lamp", 1),
    ("mug", 5),
    ("mug", 4),
    ("lamp", 3),
]


async def run_reordered(
    store: SequenceStore, on_stale: str
) -> tuple[list[tuple[str, int]], Resequencer]:
    await store.setup()
    guard = Resequencer("stock-view", store, on_gap="apply", on_stale=on_stale)  # type: ignore[arg-type]
    applied: list[tuple[str, int]] = []
    bus = EventBus(source="stock")

    @bus.subscribe(StockLevelChanged, group="stock-view")
    @guard(entity=lambda e: e.sku, sequence=lambda e: e.version)
    async def project(event: StockLevelChanged, ctx: Context) -> None:
        applied.append((event.sku, event.version))

    async with TestBus(bus) as tb:
        for sku, version in REORDERED:
            await bus.publish(
                StockLevelChanged(sku=sku, version=version, level=version * 10), key=sku
            )
        await tb.drain()
    return applied, guard


async def check_stale_events_are_ignored(store: SequenceStore) -> None:
    applied, guard = await run_reordered(store, "ignore")
    assert applied == [("mug", 1), ("mug", 3), ("lamp", 2), ("mug", 5), ("lamp", 3)]
    assert guard.stale == 4 and await guard.stale_events() == []


async def check_stale_events_are_kept(store: SequenceStore) -> None:
    applied, guard = await run_reordered(store, "keep")
    assert applied == [("mug", 1), ("mug", 3), ("lamp", 2), ("mug", 5), ("lamp", 3)]
    parked = await guard.stale_events()
    assert sorted((p.entity_id, p.sequence, p.applied) for p in parked) == [
        ("lamp", 1, 2),
        ("mug", 2, 3),
        ("mug", 3, 3),
        ("mug", 4, 5),
    ]
    assert all(p.event_type == "test.ordering.stock_level_changed" and p.event_id for p in parked)
    assert '"level":20' in next(p.data for p in parked if p.sequence == 2)


async def check_a_failing_handler_does_not_advance(store: SequenceStore) -> None:
    await store.setup()
    guard = Resequencer("failing", store)
    calls: list[int] = []

    async def boom() -> None:
        calls.append(1)
        raise RuntimeError("projection down")

    async def ok() -> None:
        calls.append(2)

    with pytest.raises(RuntimeError):
        await guard.apply("e", 1, boom)
    assert await guard.apply("e", 1, ok)  # the retry applies it: nothing was recorded
    assert not await guard.apply("e", 1, ok)
    assert calls == [1, 2]


async def check_two_consumers_of_one_entity_apply_it_once(store: SequenceStore) -> None:
    """Two deliveries of one version at once (two consumers): the entity's row lock
    (PostgreSQL) or the single writer (SQLite, memory) lets one through."""
    await store.setup()
    guard = Resequencer("racing", store)
    applied: list[int] = []
    both_in = asyncio.Barrier(2)

    async def apply() -> None:
        applied.append(1)
        with contextlib.suppress(TimeoutError):  # the other one is (rightly) waiting
            await asyncio.wait_for(both_in.wait(), 0.3)

    async def nothing() -> None:
        pass

    assert await guard.apply("e", 1, nothing)  # the entity's row exists: only a lock guards it
    results = await asyncio.gather(guard.apply("e", 2, apply), guard.apply("e", 2, apply))
    assert sorted(results) == [False, True] and applied == [1]


async def check_an_early_event_waits_and_leaves_nothing_behind(store: SequenceStore) -> None:
    """``on_gap="wait"``: an early event raises EarlyEventError (the broker redelivers it)
    and its unit of work records nothing; once its predecessor is applied, it is."""
    await store.setup()
    guard = Resequencer("waiting", store)
    ran: list[int] = []

    def run(n: int) -> Callable[[], Awaitable[None]]:
        async def handler() -> None:
            ran.append(n)

        return handler

    with pytest.raises(EarlyEventError):
        await guard.apply("e", 2, run(2))
    assert await guard.apply("e", 1, run(1)) and await guard.apply("e", 2, run(2))
    assert not await guard.apply("e", 1, run(1)) and ran == [1, 2]


CASES = [
    check_stale_events_are_ignored,
    check_stale_events_are_kept,
    check_an_early_event_waits_and_leaves_nothing_behind,
    check_a_failing_handler_does_not_advance,
    check_two_consumers_of_one_entity_apply_it_once,
]


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_resequencer(case: object, kind: str, tmp_path: Path) -> None:
    if kind == "memory":
        await case(MemorySequenceStore())  # type: ignore[operator]
        return
    async with await Database.connect(f"sqlite:///{tmp_path / 'seq.db'}") as db:
        await case(SQLSequenceStore(db))  # type: ignore[operator]
