"""Snapshots come back exactly (defect 9 of issue #19): a load that starts from a
snapshot equals a full replay of the events, types included, by default, through
a declared pydantic state model, after a snapshot upcast, and as a property over
generated event sequences."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from eventbus import Event
from eventbus.errors import ConfigurationError
from eventbus.patterns.eventsourcing import (
    Aggregate,
    EventStore,
    MemoryEventStore,
    Repository,
    StreamNotFoundError,
    applies,
)
from eventbus.patterns.eventsourcing.snapshots import Snapshot
from tests.patterns.snapshot_support import Booked, Kind, Ledger, Moved, same, state
from tests.patterns.stores import open_store


class Stocked(Event, type="es-snap.stocked", topic="es-snap.shelves"):
    sku: int
    qty: int


class Shelf(Aggregate):
    """The review's case: int dict keys and a tuple, assigned in __init__."""

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.stock: dict[int, int] = {}
        self.last: tuple[int, int] = (0, 0)

    @applies(Stocked)
    def _stocked(self, event: Stocked) -> None:
        self.stock[event.sku] = self.stock.get(event.sku, 0) + event.qty
        self.last = (event.sku, event.qty)


async def loaded_and_replayed(
    store: EventStore, cls: type[Aggregate], id: str, events: list[Event], every: int
) -> tuple[Any, Any]:
    """Save ``events`` one save at a time (snapshots every ``every``), then load
    through the latest snapshot and replay from the first event. Every snapshot
    taken on the way must restore, as exactly the replay up to its version (a
    load would otherwise fall back to the replay and hide the difference)."""
    repo = Repository(store, cls, snapshot_every=every)
    for event in events:
        try:
            aggregate = await repo.load(id)
        except StreamNotFoundError:
            aggregate = cls(id)
        aggregate.record(event)
        await repo.save(aggregate)
        snapshot = await store.load_snapshot(id)  # type: ignore[attr-defined]
        if snapshot is not None and snapshot.schema == cls.snapshot_version:
            restored = cls(id)
            restored.restore_state(snapshot.state)
            restored.version = snapshot.version
            then = await Repository(store, cls).load(id, version=snapshot.version)
            assert same(state(restored), state(then)), (state(restored), state(then))
    return await repo.load(id), await repo.replay(id)


@pytest.mark.asyncio
@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_a_load_from_a_snapshot_equals_a_replay(backend: str, tmp_path: Path) -> None:
    """The review's repro: dict[int, int] and a tuple used to come back as
    dict[str, int] and a list, and the next command corrupted the state."""
    url = "memory://" if backend == "memory" else f"sqlite:///{tmp_path}/snap.db"
    async with open_store(url) as store:
        events = [Stocked(sku=7, qty=1), Stocked(sku=7, qty=2), Stocked(sku=7, qty=4)]
        loaded, replayed = await loaded_and_replayed(store, Shelf, "shelf-1", events, 2)
        assert (await store.load_snapshot("shelf-1")).version == 2  # type: ignore[attr-defined]
        assert same(state(loaded), state(replayed)), (state(loaded), state(replayed))
        assert loaded.stock == {7: 7} and loaded.last == (7, 4)


@pytest.mark.asyncio
async def test_custom_types_round_trip_exactly() -> None:
    """UUID, Decimal, datetimes (fixed offsets and ZoneInfo), enums, nested models,
    dataclasses, sets, bytes: the snapshot's state is the replayed state."""
    paris = ZoneInfo("Europe/Paris")
    events: list[Event] = [
        Booked(
            key=1,
            label="a",
            amount=Decimal("1.10"),
            kind=Kind.CREDIT,
            ref=uuid.uuid4(),
            at=datetime(2024, 3, 31, 1, 30, tzinfo=paris),
            ratio=0.1,
        ),
        Moved(street="Rue", number=None, tags=["x", "y"]),
        Booked(
            key=2,
            label="b",
            amount=Decimal("-3E+2"),
            kind=Kind.DEBIT,
            ref=uuid.uuid4(),
            at=datetime(2024, 4, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=-3))),
            ratio=1e308,
        ),
        Booked(
            key=1,
            label="a",
            amount=Decimal("0.005"),
            kind=Kind.CREDIT,
            ref=uuid.uuid4(),
            at=datetime(2024, 4, 2, tzinfo=UTC),
            ratio=-0.0,
        ),
    ]
    loaded, replayed = await loaded_and_replayed(MemoryEventStore(), Ledger, "l", events, 2)
    assert same(state(loaded), state(replayed))
    assert loaded.local_at.tzinfo is paris and loaded.by_key[1] == Decimal("1.105")
    assert loaded.first_at.tzinfo == replayed.first_at.tzinfo  # pydantic's, as stored


class ShelfState(BaseModel):
    stock: dict[int, int]
    last: tuple[int, int]


class ModelShelf(Shelf):
    """The same state through a declared pydantic model."""

    snapshot_type: ClassVar[str] = "ModelShelf"
    state_model: ClassVar[type[BaseModel] | None] = ShelfState


@pytest.mark.asyncio
async def test_a_declared_state_model_round_trips_exactly() -> None:
    events = [Stocked(sku=3, qty=1), Stocked(sku=4, qty=2), Stocked(sku=3, qty=5)]
    store = MemoryEventStore()
    loaded, replayed = await loaded_and_replayed(store, ModelShelf, "m", events, 2)
    assert same(state(loaded), state(replayed))
    snapshot = await store.load_snapshot("m")
    assert snapshot is not None and b'"stock":{"3":1,"4":2}' in snapshot.state
    bad = ModelShelf("x")
    bad.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match=r"no field for \['extra'\]"):
        bad.snapshot_state()
    bad = ModelShelf("y")
    bad.last = [1, 2]  # type: ignore[assignment]
    with pytest.raises(ConfigurationError, match="does not match its state_model"):
        bad.snapshot_state()


class ShelfV2(Shelf):
    """Version 2 of the shelf's state: stock counted in dozens as (sku, dozens) pairs."""

    snapshot_type: ClassVar[str] = "Shelf"
    snapshot_version: ClassVar[int] = 2
    upcasts: ClassVar[int] = 0

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.dozens: dict[int, tuple[int, int]] = {}
        del self.stock

    @applies(Stocked)
    def _stocked(self, event: Stocked) -> None:
        held = self.dozens.get(event.sku, (0, 0))
        total = held[0] * 12 + held[1] + event.qty
        self.dozens[event.sku] = divmod(total, 12)
        self.last = (event.sku, event.qty)

    @staticmethod
    def upcast_snapshot_v1_v2(old: dict[str, Any]) -> dict[str, Any]:
        ShelfV2.upcasts += 1
        return {
            "dozens": {sku: divmod(n, 12) for sku, n in old["stock"].items()},
            "last": old["last"],
        }


@pytest.mark.asyncio
async def test_an_older_snapshot_is_upcast() -> None:
    """snapshot_version 2 with upcast_snapshot_v1_v2: a version 1 snapshot is
    brought forward instead of ignored (as the eventsourcing library does)."""
    store = MemoryEventStore()
    await loaded_and_replayed(store, Shelf, "s", [Stocked(sku=1, qty=13)] * 2, 2)
    repo = Repository(store, ShelfV2, snapshot_every=2)
    ShelfV2.upcasts = 0
    loaded = await repo.load("s")
    assert ShelfV2.upcasts == 1
    replayed = await repo.replay("s")
    assert same(state(loaded), state(replayed)) and loaded.dozens == {1: (2, 2)}


@pytest.mark.asyncio
async def test_a_snapshot_that_cannot_be_restored_is_replayed_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryEventStore()
    await loaded_and_replayed(store, Shelf, "s", [Stocked(sku=1, qty=1)] * 2, 2)
    await store.save_snapshot(
        Snapshot("s", 2, "Shelf", 1, b'{"$exact":1,"stock":{"$nope":1},"last":[1,1]}')
    )
    with caplog.at_level(logging.WARNING):
        loaded = await Repository(store, Shelf, snapshot_every=2).load("s")
    assert loaded.stock == {1: 2} and "replaying its events instead" in caplog.text


@pytest.mark.asyncio
async def test_state_without_an_exact_form_is_refused_naming_it() -> None:
    shelf = Shelf("s")
    shelf.stock = {1: object()}  # type: ignore[dict-item]
    with pytest.raises(ConfigurationError, match=r"attribute 'stock'.*state_model"):
        shelf.snapshot_state()


zones = st.sampled_from(
    [
        UTC,
        timezone(timedelta(hours=5, minutes=30)),
        ZoneInfo("Europe/Paris"),
        ZoneInfo("America/New_York"),
    ]
)
bookings = st.builds(
    Booked,
    key=st.integers(-3, 3),
    label=st.text(max_size=3),
    amount=st.decimals(
        allow_nan=False, allow_infinity=False, places=3, min_value=-1000, max_value=1000
    ),
    kind=st.sampled_from(Kind),
    ref=st.uuids(),
    at=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=zones
    ),
    ratio=st.floats(allow_nan=False, allow_infinity=False),
)
moves = st.builds(
    Moved,
    street=st.text(max_size=4),
    number=st.none() | st.integers(),
    tags=st.lists(st.text(max_size=2), max_size=3),
)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(events=st.lists(bookings | moves, min_size=1, max_size=12), every=st.integers(1, 5))
def test_snapshot_equals_replay_for_any_event_sequence(events: list[Event], every: int) -> None:
    """Property: for any sequence of events and any snapshot interval, loading via
    the latest snapshot gives exactly the state a full replay gives."""
    loaded, replayed = asyncio.run(
        loaded_and_replayed(MemoryEventStore(), Ledger, "p", events, every)
    )
    assert same(state(loaded), state(replayed)), (state(loaded), state(replayed))
    assert same(state(loaded), state(_recorded(events)))


def _recorded(events: list[Event]) -> Ledger:
    """The aggregate as the commands left it, before any save."""
    ledger = Ledger("p")
    for event in events:
        ledger.record(event)
    return ledger


@pytest.mark.asyncio
async def test_a_plain_json_snapshot_of_an_earlier_version_is_not_trusted() -> None:
    """Snapshots written before the exact form (plain JSON, int keys as strings) are
    replayed over, not restored with their drift."""
    store = MemoryEventStore()
    await loaded_and_replayed(store, Shelf, "s", [Stocked(sku=7, qty=1)] * 2, 2)
    await store.save_snapshot(Snapshot("s", 2, "Shelf", 1, b'{"last":[7,1],"stock":{"7":2}}'))
    loaded = await Repository(store, Shelf, snapshot_every=2).load("s")
    assert same(state(loaded), state(await Repository(store, Shelf).load("s")))
