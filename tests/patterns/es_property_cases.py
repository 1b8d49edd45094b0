"""The property of issue #19's "done when": any interleaving of appends (with
snapshots), loads, and two concurrent projectors of one projection (one of them
rebuilding) ends with the read model equal to a replay of the store, and every
load through a snapshot equal to a replay of its stream.

Each generated case is a list of *steps*; the operations of one step run at once
(``asyncio.gather``), each projector through its own connection (SQLite) or pool
(PostgreSQL), as two processes would, with generated pauses where a race hurts
most: after a projector read its page, and inside a rebuild's ``clear()``. The
outcome must not depend on how the database interleaves them, so the check is
exact whatever the timing. Cases are generated from a fixed seed
(``derandomize``), so a run is reproducible; a case has its own tables.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from eventbus import Event
from eventbus.events import Message
from eventbus.patterns.cqrs import Projection
from eventbus.patterns.eventsourcing import (
    Aggregate,
    ConcurrencyError,
    Repository,
    SQLEventStore,
    StoredEvent,
    StreamNotFoundError,
    applies,
)
from eventbus.patterns.sql import Database, Transaction
from tests.patterns.snapshot_support import same, state

CASES = 200
STREAMS = 3
SETTINGS = settings(
    max_examples=CASES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


class Added(Event, type="es-prop.added", topic="es-prop.counters"):
    counter: str
    amount: int


class Counter(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.total = 0
        self.history: tuple[int, ...] = ()
        self.by_parity: dict[int, int] = {}

    @applies(Added)
    def _added(self, event: Added) -> None:
        self.total += event.amount
        self.history += (event.amount,)
        self.by_parity[event.amount % 2] = self.by_parity.get(event.amount % 2, 0) + 1


class Totals(Projection):
    """Per counter: the sum, the count and the amounts in order (so a lost, doubled
    or reordered event shows)."""

    handles = (Added,)

    def __init__(self, db: Database, *, name: str, table: str) -> None:
        super().__init__(db, name=name, batch=3, poll_interval=0.01)
        self.table = table
        self.clear_pause = 0.0

    async def create_tables(self, tx: Transaction) -> None:
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table} (counter TEXT PRIMARY KEY, "
            "total BIGINT NOT NULL, n BIGINT NOT NULL, history TEXT NOT NULL)"
        )

    async def clear(self, tx: Transaction) -> None:
        await tx.execute(f"DELETE FROM {self.table}")
        if self.clear_pause:
            await asyncio.sleep(self.clear_pause)  # a large read model: a slow DELETE

    async def apply(self, event: Message, tx: Transaction) -> None:
        assert isinstance(event, Added)
        t = self.table
        await tx.execute(
            f"INSERT INTO {t} (counter, total, n, history) VALUES ($1, $2, 1, $3) "
            f"ON CONFLICT (counter) DO UPDATE SET total = {t}.total + excluded.total, "
            f"n = {t}.n + 1, history = {t}.history || excluded.history",
            event.counter,
            event.amount,
            f"{event.amount},",
        )

    async def rows(self) -> dict[str, tuple[int, int, str]]:
        async with self.db.transaction() as tx:
            found = await tx.fetch(f"SELECT counter, total, n, history FROM {self.table}")
        return {r[0]: (int(r[1]), int(r[2]), str(r[3])) for r in found}


class Reader:
    """The store as one projector reads it, through its own connection, pausing
    after it read a page (the window in which a rebuild can overtake it)."""

    def __init__(self, store: SQLEventStore) -> None:
        self.store = store
        self.pause = 0.0

    async def read_all(self, after: int = 0, limit: int = 500) -> list[StoredEvent]:
        page = await self.store.read_all(after, limit)
        if page and self.pause:
            await asyncio.sleep(self.pause)
        return page


# -- the generated cases ---------------------------------------------------------------


@dataclass(frozen=True)
class Append:
    stream: int
    amounts: tuple[int, ...]


@dataclass(frozen=True)
class Load:
    stream: int


@dataclass(frozen=True)
class CatchUp:
    projector: int  # 0 or 1
    pause: float


@dataclass(frozen=True)
class Rebuild:
    projector: int
    pause: float


pauses = st.sampled_from([0.0, 0.0, 0.002, 0.01])
operations = st.one_of(
    st.builds(
        Append,
        st.integers(0, STREAMS - 1),
        st.lists(st.integers(-5, 9), min_size=1, max_size=3).map(tuple),
    ),
    st.builds(Load, st.integers(0, STREAMS - 1)),
    st.builds(CatchUp, st.integers(0, 1), pauses),
    st.builds(Rebuild, st.integers(0, 1), pauses),
)
steps = st.lists(st.lists(operations, min_size=1, max_size=3), min_size=1, max_size=6)
snapshot_every = st.integers(1, 4)


class World:
    """One database URL opened three times (the writer, projector 0, projector 1)
    on one event loop kept for the whole run; each case gets fresh table names."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.dbs: list[Database] = []
        self.cases = itertools.count()

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def open(self) -> None:
        self.dbs = [await Database.connect(self.url) for _ in range(3)]

    async def close(self) -> None:
        for db in self.dbs:
            await db.close()


@contextmanager
def world(url: str) -> Iterator[World]:
    opened = World(url)
    opened.run(opened.open())
    try:
        yield opened
    finally:
        opened.run(opened.close())
        opened.loop.close()


async def check_case(world: World, plan: list[list[Any]], every: int) -> None:
    """Run ``plan``; then the read model must equal a replay of the store."""
    n = next(world.cases)
    writer_db, *projector_dbs = world.dbs
    store = SQLEventStore(writer_db, table=f"prop_es_{n}")
    await store.setup()
    repo = Repository(store, Counter, snapshot_every=every)
    projectors = [Totals(db, name=f"prop-{n}", table=f"prop_rm_{n}") for db in projector_dbs]
    readers = [Reader(SQLEventStore(db, table=f"prop_es_{n}")) for db in projector_dbs]
    await projectors[0].setup()

    async def run(op: Any) -> None:
        if isinstance(op, Append):
            await append(repo, f"s{op.stream}", op.amounts)
        elif isinstance(op, Load):
            await check_load(repo, f"s{op.stream}")
        elif isinstance(op, CatchUp):
            readers[op.projector].pause = op.pause
            await projectors[op.projector].catch_up(readers[op.projector])  # type: ignore[arg-type]
        else:
            projectors[op.projector].clear_pause = op.pause
            readers[op.projector].pause = 0.0
            await projectors[op.projector].rebuild(readers[op.projector])  # type: ignore[arg-type]

    for step in plan:
        await asyncio.gather(*(run(op) for op in step))
    for index, projector in enumerate(projectors):
        readers[index].pause = 0.0
        await projector.catch_up(readers[index])  # type: ignore[arg-type]
    expected = {}
    for stream in range(STREAMS):
        try:
            replayed = await repo.replay(f"s{stream}")
        except StreamNotFoundError:
            continue
        expected[f"s{stream}"] = (
            replayed.total,
            len(replayed.history),
            "".join(f"{a}," for a in replayed.history),
        )
        await check_load(repo, f"s{stream}")
    assert await projectors[0].rows() == expected, f"case {n}: read model != replay"
    assert await projectors[1].position() == await store.last_position()


async def append(repo: Repository[Counter], stream: str, amounts: tuple[int, ...]) -> None:
    for _ in range(50):  # a concurrent append to the same stream: reload and retry
        try:
            counter = await repo.load(stream)
        except StreamNotFoundError:
            counter = Counter(stream)
        for amount in amounts:
            counter.record(Added(counter=stream, amount=amount))
        try:
            await repo.save(counter)
            return
        except ConcurrencyError:
            await asyncio.sleep(0)
    raise AssertionError(f"could not append to {stream}")  # pragma: no cover


async def check_load(repo: Repository[Counter], stream: str) -> None:
    """A load through the latest snapshot equals a replay of the same events."""
    try:
        loaded = await repo.load(stream)
    except StreamNotFoundError:
        return
    replayed = await Repository(repo.store, Counter).load(stream, version=loaded.version)
    assert same(state(loaded), state(replayed)), (state(loaded), state(replayed))
