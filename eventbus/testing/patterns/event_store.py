"""The event store contract as a suite: every case an event store must pass, memory,
SQLite and PostgreSQL alike, and a third-party store too.

(Over 400 lines on purpose: one contract suite: its cases are read as the event store's
specification.)

Subclass :class:`EventStoreSuite` in a test module (named ``Test...``) next to an
``event_store_target`` fixture returning an :class:`EventStoreTarget`::

    import pytest
    from eventbus.testing.patterns import EventStoreSuite, EventStoreTarget

    @pytest.fixture
    def event_store_target(tmp_path) -> EventStoreTarget:
        url = f"sqlite:///{tmp_path}/events.db"  # fresh storage for every test
        return EventStoreTarget("sqlite", lambda: MyEventStore.connect(url))

    class TestMyEventStore(EventStoreSuite):
        pass

Cases on transactions (``append_in``) run where the store has them (a ``db``
attribute, a :class:`~eventbus.patterns.sql.Database`, and ``append_in(tx, ...)``),
and are skipped, saying so, where it has not; snapshot cases need the store to be a
:class:`~eventbus.patterns.eventsourcing.snapshots.SnapshotStore`.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar

import pytest

from eventbus._timeids import utcnow
from eventbus.envelope import Envelope
from eventbus.errors import SchemaError
from eventbus.events import Event, Registry
from eventbus.patterns.eventsourcing import (
    Aggregate,
    ConcurrencyError,
    DuplicateEventError,
    EventStore,
    Repository,
    StreamNotFoundError,
    applies,
    iter_all,
    iter_stream,
)
from eventbus.testing.patterns._support import store_case

__all__ = [
    "Account",
    "Deposited",
    "EventStoreCases",
    "EventStoreSuite",
    "EventStoreTarget",
    "Opened",
    "envs",
    "gap_safe_reader",
]


@dataclass(frozen=True)
class EventStoreTarget:
    """The event store under test.

    ``connect()`` opens a handle on this test's store: empty at the first call (give
    every test its own storage: a temporary file, a fresh database), and every
    further call another handle onto the same events, with a connection of its own
    where the store has connections (as another process would have). The suite
    calls ``setup()`` and ``close()`` on each handle it opens.
    """

    name: str
    connect: Callable[[], Awaitable[EventStore]]


class Opened(Event, type="es-test.opened", topic="es-test.accounts"):
    """An account was opened (the suite's first event)."""

    owner: str


class Deposited(Event, type="es-test.deposited", topic="es-test.accounts"):
    """Money was paid in."""

    amount: int


class Account(Aggregate):
    """The suite's aggregate; ``applied`` counts the events loads applied."""

    applied: ClassVar[int] = 0

    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.owner = ""
        self.balance = 0

    def open(self, owner: str) -> None:
        self.record(Opened(owner=owner))

    def deposit(self, amount: int) -> None:
        self.record(Deposited(amount=amount))

    @applies(Opened)
    def _opened(self, event: Opened) -> None:
        self.owner = event.owner
        Account.applied += 1

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount
        Account.applied += 1


@asynccontextmanager
async def opened(target: EventStoreTarget) -> AsyncIterator[EventStore]:
    """A handle on the target's store, set up, closed on the way out."""
    store = await target.connect()
    try:
        await store.setup()
        yield store
    finally:
        await store.close()


def envs(n: int, stream: str = "s") -> list[Envelope]:
    """``n`` fresh envelopes of the suite's ``Deposited`` event."""
    return [
        Envelope.create(
            type="es-test.deposited", source="t", data=b'{"amount":%d}' % i, subject=stream
        )
        for i in range(n)
    ]


async def gap_safe_reader(target: EventStoreTarget, writers: int = 4, appends: int = 12) -> None:
    """Writers on their own connections commit late (they pause inside the append
    transaction); a reader polling read_all meanwhile must end with exactly the
    store's contents, in order, with nothing skipped."""
    async with opened(target) as reader, AsyncExitStack() as handles:
        stores = [await handles.enter_async_context(opened(target)) for _ in range(writers)]
        finished = asyncio.Event()
        seen: list[int] = []

        async def write(index: int, store: EventStore) -> None:
            rng = random.Random(index)
            for _ in range(appends):
                batch = envs(rng.randint(1, 3))
                version = await store.stream_version(f"w{index}")
                append_in = getattr(store, "append_in", None)
                if append_in is None:
                    await store.append(f"w{index}", batch, version)
                    await asyncio.sleep(rng.uniform(0, 0.003))
                    continue
                async with store.db.transaction() as tx:  # type: ignore[attr-defined]
                    await append_in(tx, f"w{index}", batch, version)
                    await asyncio.sleep(rng.uniform(0, 0.003))  # commit late

        async def read() -> None:
            after = 0
            while True:
                done = finished.is_set()  # checked before the read: the last pass sees all
                page = await reader.read_all(after, 5)
                seen.extend(s.position for s in page)
                after = page[-1].position if page else after
                if done and not page:
                    return
                await asyncio.sleep(0)

        polling = asyncio.create_task(read())
        try:
            await asyncio.wait_for(asyncio.gather(*(write(i, s) for i, s in enumerate(stores))), 60)
            finished.set()
            await asyncio.wait_for(polling, 30)
        finally:
            polling.cancel()
        final = [s.position async for s in iter_all(reader)]
        assert len(final) >= writers * appends
        missing = sorted(set(final) - set(seen))
        assert seen == final, f"the polling reader skipped positions {missing[:20]}"


def _versioned_registry(with_upcaster: bool) -> tuple[Registry, type[Event]]:
    registry = Registry()

    class Renamed(Event, type="es-test.renamed", version=2, register=False):
        full_name: str

    registry.register(Renamed)
    if with_upcaster:

        @registry.upcaster("es-test.renamed", from_version=1)
        def _v1(data: dict[str, object]) -> dict[str, object]:
            return {"full_name": f"{data['first']} {data['last']}"}

    return registry, Renamed


class EventStoreCases:
    """Every case of the event store contract (each on a store of its own)."""

    @store_case()
    async def test_append_and_read(self, event_store_target: EventStoreTarget) -> None:
        async with opened(event_store_target) as store:
            assert await store.last_position() == 0
            a = await store.append("a", envs(2), 0)
            b = await store.append("b", envs(1), 0)
            a2 = await store.append("a", envs(1), 2)
            assert [(s.position, s.stream_id, s.version) for s in a + b + a2] == [
                (1, "a", 1),
                (2, "a", 2),
                (3, "b", 1),
                (4, "a", 3),
            ]
            assert [s.version for s in await store.read_stream("a")] == [1, 2, 3]
            assert [
                s.version for s in await store.read_stream("a", after_version=1, to_version=2)
            ] == [2]
            assert await store.stream_version("a") == 3 and await store.stream_version("zz") == 0
            everything = await store.read_all()
            assert [s.position for s in everything] == [1, 2, 3, 4]
            assert [s.id for s in everything] == [s.id for s in a + b + a2]
            assert everything[0].envelope == a[0].envelope
            assert isinstance(everything[0].event, Deposited)
            assert [s.position for s in await store.read_all(after=1, limit=2)] == [2, 3]
            assert await store.last_position() == 4
            assert await store.append("b", envs(1), None) != []  # None: at the end, no check
            assert await store.stream_version("b") == 2
            assert [s.position async for s in iter_all(store, after=2, batch=2)] == [3, 4, 5]
            assert [s.version async for s in iter_stream(store, "a", batch=2)] == [1, 2, 3]
            assert await store.get_checkpoint("relay") == 0
            await store.set_checkpoint("relay", 4)
            await store.set_checkpoint("relay", 5)
            assert await store.get_checkpoint("relay") == 5

    @store_case()
    async def test_concurrent_appends_conflict(self, event_store_target: EventStoreTarget) -> None:
        """Two writers at the same expected version: exactly one wins, the other is told why."""
        async with opened(event_store_target) as store:
            await store.append("acc", envs(1), 0)
            # Some writers have a connection of their own (another process would).
            async with AsyncExitStack() as handles:
                others = [
                    await handles.enter_async_context(opened(event_store_target)) for _ in range(2)
                ]
                writers = [store, *others, store, *others][:5]
                results = await asyncio.gather(
                    *(w.append("acc", envs(2), 1) for w in writers), return_exceptions=True
                )
            wins = [r for r in results if not isinstance(r, BaseException)]
            losses = [r for r in results if isinstance(r, BaseException)]
            assert len(wins) == 1, results
            assert all(isinstance(e, ConcurrencyError) for e in losses), losses
            error = losses[0]
            assert isinstance(error, ConcurrencyError)
            assert (error.stream_id, error.expected_version, error.actual_version) == ("acc", 1, 3)
            assert "'acc'" in str(error) and "expected version 1" in str(error)
            assert [s.version for s in await store.read_stream("acc")] == [1, 2, 3]
            with pytest.raises(ConcurrencyError, match="expected version 0 but it is at version 3"):
                await store.append("acc", envs(1), 0)
            with pytest.raises(ConcurrencyError, match="expected version 2 but it is at version 3"):
                await store.append("acc", envs(3), 2)  # the first row conflicts, the rest not
            with pytest.raises(ConcurrencyError, match="expected version 7"):
                await store.append("acc", envs(1), 7)
            assert await store.last_position() == 3

    @store_case()
    async def test_idempotent_append(self, event_store_target: EventStoreTarget) -> None:
        async with opened(event_store_target) as store:
            batch = envs(3)
            first = await store.append("s", batch, 0)
            await store.append("t", envs(1), 0)
            again = await store.append("s", batch, 0)  # a retry: same ids, same answer
            assert [(s.position, s.version) for s in again] == [
                (s.position, s.version) for s in first
            ]
            assert await store.last_position() == 4
            with pytest.raises(DuplicateEventError, match="1 of the 2 event ids"):
                await store.append("s", [batch[0], *envs(1)], 3)
            with pytest.raises(DuplicateEventError):
                await store.append("other", batch, 0)
            with pytest.raises(DuplicateEventError, match="twice"):
                await store.append("s", [batch[0], batch[0]], 3)
            assert await store.last_position() == 4

    @store_case()
    async def test_repository(self, event_store_target: EventStoreTarget) -> None:
        async with opened(event_store_target) as store:
            repo = Repository(store, Account)
            with pytest.raises(StreamNotFoundError, match="'acc-1'"):
                await repo.load("acc-1")
            account = Account("acc-1")
            account.open("ada")
            account.deposit(10)
            assert account.version == 2 and len(account.pending) == 2
            stored = await repo.save(account)
            assert [s.version for s in stored] == [1, 2] and account.pending == []
            first = stored[0].envelope
            assert first.subject == "acc-1" and first.partitionkey == "acc-1"
            assert await repo.save(account) == []
            loaded = await repo.load("acc-1")
            assert (loaded.owner, loaded.balance, loaded.version) == ("ada", 10, 2)
            loaded.deposit(5)
            stale = await repo.load("acc-1")
            stale.deposit(1)
            await repo.save(loaded)
            with pytest.raises(ConcurrencyError):
                await repo.save(stale)
            assert (await repo.load("acc-1")).balance == 15
            assert (await repo.load("acc-1", version=1)).balance == 0
            assert (await repo.replay("acc-1")).balance == 15

    @store_case()
    async def test_save_retry_is_idempotent(self, event_store_target: EventStoreTarget) -> None:
        """A save retried after an append that did commit writes nothing twice."""
        async with opened(event_store_target) as store:
            repo = Repository(store, Account)
            account = Account("r")
            account.open("bo")
            envelopes_before = None
            original = store.append

            async def commit_then_fail(*args: object, **kw: object) -> object:
                nonlocal envelopes_before
                envelopes_before = await original(*args, **kw)  # type: ignore[arg-type]
                raise ConnectionError("lost the connection after the commit")

            store.append = commit_then_fail  # type: ignore[method-assign,assignment]
            with pytest.raises(ConnectionError):
                await repo.save(account)
            store.append = original  # type: ignore[method-assign]
            await repo.save(account)
            assert await store.stream_version("r") == 1

    @store_case()
    async def test_load_as_of_time(self, event_store_target: EventStoreTarget) -> None:
        async with opened(event_store_target) as store:
            t0 = utcnow()
            events = [e.evolve(time=t0 + timedelta(seconds=i)) for i, e in enumerate(envs(3))]
            await store.append("t", events, 0)
            repo = Repository(store, Account)
            as_of = await repo.load("t", at=t0 + timedelta(seconds=1, milliseconds=500))
            assert as_of.version == 2 and as_of.balance == 0 + 1
            assert (await repo.load("t", at=t0 + timedelta(days=1))).version == 3
            with pytest.raises(StreamNotFoundError, match="as of"):
                await repo.load("t", at=t0 - timedelta(seconds=1))
            assert (await repo.load("t", version=2, at=t0 + timedelta(days=1))).version == 2

    @store_case()
    async def test_snapshots(self, event_store_target: EventStoreTarget) -> None:
        async with opened(event_store_target) as store:
            repo = Repository(store, Account, snapshot_every=3)
            account = Account("snap")
            account.open("cy")
            for amount in range(1, 8):  # versions 2..8, saved one at a time
                account.deposit(amount)
                await repo.save(account)
            snapshot = await store.load_snapshot("snap")  # type: ignore[attr-defined]
            assert snapshot is not None and snapshot.version == 6
            assert (await store.load_snapshot("snap", 5)).version == 3  # type: ignore[attr-defined]
            Account.applied = 0
            loaded = await repo.load("snap")
            assert (loaded.balance, loaded.owner, loaded.version) == (28, "cy", 8)
            assert Account.applied == 2  # events 7 and 8 on top of the snapshot at 6
            Account.applied = 0
            at4 = await repo.load("snap", version=4)
            assert (at4.balance, at4.version, Account.applied) == (6, 4, 1)
            no_snapshots = Repository(store, Account)
            Account.applied = 0
            assert (await no_snapshots.load("snap")).balance == 28 and Account.applied == 8

    @store_case()
    async def test_upcasting_on_load(self, event_store_target: EventStoreTarget) -> None:
        registry, renamed = _versioned_registry(with_upcaster=True)
        bare_registry, _ = _versioned_registry(with_upcaster=False)

        class Person(Aggregate):
            def __init__(self, id: str) -> None:
                super().__init__(id)
                self.name = ""

            @applies(renamed)
            def _renamed(self, event: Event) -> None:
                self.name = event.full_name  # type: ignore[attr-defined]

        async with opened(event_store_target) as store:
            old = Envelope.create(
                type="es-test.renamed",
                source="t",
                dataversion=1,
                data=b'{"first":"Ada","last":"Lovelace"}',
            )
            await store.append("p", [old], 0)
            person = await Repository(store, Person, registry=registry).load("p")
            assert person.name == "Ada Lovelace"
            with pytest.raises(
                SchemaError,
                match=r"stream 'p' version 1: .*no upcaster from "
                r"version 1.*registry.upcaster",
            ):
                await Repository(store, Person, registry=bare_registry).load("p")

    @store_case()
    async def test_append_in_own_transaction(self, event_store_target: EventStoreTarget) -> None:
        """Stores with transactions: events appended inside the caller's transaction
        commit or roll back with the caller's other rows."""
        async with opened(event_store_target) as store:
            if not hasattr(store, "append_in") or not hasattr(store, "db"):
                pytest.skip(
                    f"{event_store_target.name}: the store has no transactions to join "
                    "(no db and append_in(tx, ...))"
                )
            db = store.db
            async with db.transaction() as tx:
                await tx.execute("CREATE TABLE es_side (id TEXT PRIMARY KEY)")
            with pytest.raises(RuntimeError):
                async with db.transaction() as tx:
                    await store.append_in(tx, "u", envs(2), 0)
                    await tx.execute("INSERT INTO es_side (id) VALUES ('one')")
                    raise RuntimeError("the unit of work failed")
            assert await store.stream_version("u") == 0 and await store.last_position() == 0
            async with db.transaction() as tx:
                await store.append_in(tx, "u", envs(2), 0)
                await tx.execute("INSERT INTO es_side (id) VALUES ('one')")
            assert await store.stream_version("u") == 2
            with pytest.raises(ConcurrencyError):
                async with db.transaction() as tx:
                    await tx.execute("INSERT INTO es_side (id) VALUES ('two')")
                    await store.append_in(tx, "u", envs(1), 0)
            async with db.transaction() as tx:
                assert await tx.fetch("SELECT id FROM es_side") == [("one",)]
            assert await store.append("u", [], 2) == []

    @store_case()
    async def test_gap_safe_reader(self, event_store_target: EventStoreTarget) -> None:
        await gap_safe_reader(event_store_target)


class EventStoreSuite(EventStoreCases):
    """The whole event store suite; subclass it (as ``Test...``) next to an
    ``event_store_target`` fixture."""
