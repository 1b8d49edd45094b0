"""The event store's behaviour, shared by memory, SQLite (tests/patterns) and PostgreSQL
(integration_tests/patterns): each check takes a store URL ("memory://" for the
in-memory store) and opens its own store."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import ClassVar

import pytest

from eventbus import Event
from eventbus.envelope import Envelope
from eventbus.errors import SchemaError
from eventbus.events import Registry
from eventbus.patterns.eventsourcing import (
    Aggregate,
    ConcurrencyError,
    DuplicateEventError,
    EventStore,
    MemoryEventStore,
    Repository,
    StreamNotFoundError,
    applies,
    iter_all,
    iter_stream,
)
from eventbus.timeids import utcnow


class Opened(Event, type="es-test.opened", topic="es-test.accounts"):
    owner: str


class Deposited(Event, type="es-test.deposited", topic="es-test.accounts"):
    amount: int


class Account(Aggregate):
    applied: ClassVar[int] = 0  # how many events loads applied (snapshot checks)

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
async def open_store(url: str) -> AsyncIterator[EventStore]:
    store: EventStore
    if url == "memory://":
        store = MemoryEventStore()
    else:
        from eventbus.patterns.eventsourcing import SQLEventStore

        store = await SQLEventStore.connect(url)
    await store.setup()
    try:
        yield store
    finally:
        await store.close()


def envs(n: int, stream: str = "s") -> list[Envelope]:
    return [Envelope.create(type="es-test.deposited", source="t", data=b'{"amount":%d}' % i,
                            subject=stream) for i in range(n)]


async def check_append_and_read(url: str) -> None:
    async with open_store(url) as store:
        assert await store.last_position() == 0
        a = await store.append("a", envs(2), 0)
        b = await store.append("b", envs(1), 0)
        a2 = await store.append("a", envs(1), 2)
        assert [(s.position, s.stream_id, s.version) for s in a + b + a2] == [
            (1, "a", 1), (2, "a", 2), (3, "b", 1), (4, "a", 3)]
        assert [s.version for s in await store.read_stream("a")] == [1, 2, 3]
        assert [s.version for s in await store.read_stream("a", after_version=1,
                                                           to_version=2)] == [2]
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


async def check_concurrent_appends_conflict(url: str) -> None:
    """Two writers at the same expected version: exactly one wins, the other is told why."""
    async with open_store(url) as store:
        await store.append("acc", envs(1), 0)
        # On SQL stores half the writers have their own connection (another process).
        own = [open_store(url) for _ in range(2)] if url != "memory://" else []
        others = [await cm.__aenter__() for cm in own]
        writers = [store, *others, store, *others][:5] if others else [store] * 5
        try:
            results = await asyncio.gather(
                *(w.append("acc", envs(2), 1) for w in writers), return_exceptions=True)
        finally:
            for cm in own:
                await cm.__aexit__(None, None, None)
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


async def check_idempotent_append(url: str) -> None:
    async with open_store(url) as store:
        batch = envs(3)
        first = await store.append("s", batch, 0)
        await store.append("t", envs(1), 0)
        again = await store.append("s", batch, 0)  # a retry: same ids, same answer
        assert [(s.position, s.version) for s in again] == [(s.position, s.version)
                                                             for s in first]
        assert await store.last_position() == 4
        with pytest.raises(DuplicateEventError, match="1 of the 2 event ids"):
            await store.append("s", [batch[0], *envs(1)], 3)
        with pytest.raises(DuplicateEventError):
            await store.append("other", batch, 0)
        with pytest.raises(DuplicateEventError, match="twice"):
            await store.append("s", [batch[0], batch[0]], 3)
        assert await store.last_position() == 4


async def check_repository(url: str) -> None:
    async with open_store(url) as store:
        repo = Repository(store, Account)
        with pytest.raises(StreamNotFoundError, match="'acc-1'"):
            await repo.load("acc-1")
        account = Account("acc-1")
        account.open("ada")
        account.deposit(10)
        assert account.version == 2 and len(account.pending) == 2
        stored = await repo.save(account)
        assert [s.version for s in stored] == [1, 2] and account.pending == []
        assert stored[0].envelope.subject == "acc-1" and stored[0].envelope.partitionkey == "acc-1"
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


async def check_save_retry_is_idempotent(url: str) -> None:
    """A save retried after an append that did commit writes nothing twice."""
    async with open_store(url) as store:
        repo = Repository(store, Account)
        account = Account("r")
        account.open("bo")
        envelopes_before = None
        original = store.append

        async def commit_then_fail(*args: object, **kw: object) -> object:
            nonlocal envelopes_before
            envelopes_before = await original(*args, **kw)  # type: ignore[arg-type]
            raise ConnectionError("lost the connection after the commit")

        store.append = commit_then_fail  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            await repo.save(account)
        store.append = original  # type: ignore[method-assign]
        await repo.save(account)
        assert await store.stream_version("r") == 1


async def check_load_as_of_time(url: str) -> None:
    async with open_store(url) as store:
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


async def check_snapshots(url: str) -> None:
    async with open_store(url) as store:
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


async def check_upcasting_on_load(url: str) -> None:
    registry, renamed = _versioned_registry(with_upcaster=True)
    bare_registry, _ = _versioned_registry(with_upcaster=False)

    class Person(Aggregate):
        def __init__(self, id: str) -> None:
            super().__init__(id)
            self.name = ""

        @applies(renamed)
        def _renamed(self, event: Event) -> None:
            self.name = event.full_name  # type: ignore[attr-defined]

    async with open_store(url) as store:
        old = Envelope.create(type="es-test.renamed", source="t", dataversion=1,
                              data=b'{"first":"Ada","last":"Lovelace"}')
        await store.append("p", [old], 0)
        person = await Repository(store, Person, registry=registry).load("p")
        assert person.name == "Ada Lovelace"
        with pytest.raises(SchemaError, match=r"stream 'p' version 1: .*no upcaster from "
                                              r"version 1.*registry.upcaster"):
            await Repository(store, Person, registry=bare_registry).load("p")


async def check_gap_safe_reader(url: str, writers: int = 4, appends: int = 12) -> None:
    """Writers on their own connections commit late (they pause inside the append
    transaction); a reader polling read_all meanwhile must end with exactly the
    store's contents, in order, with nothing skipped."""
    async with open_store(url) as reader:
        own = [open_store(url) for _ in range(writers)] if url != "memory://" else []
        stores = [await cm.__aenter__() for cm in own] or [reader] * writers
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
            await asyncio.wait_for(
                asyncio.gather(*(write(i, s) for i, s in enumerate(stores))), 60)
            finished.set()
            await asyncio.wait_for(polling, 30)
        finally:
            polling.cancel()
            for cm in own:
                await cm.__aexit__(None, None, None)
        final = [s.position async for s in iter_all(reader)]
        assert len(final) >= writers * appends
        missing = sorted(set(final) - set(seen))
        assert seen == final, f"the polling reader skipped positions {missing[:20]}"


async def check_append_in_own_transaction(url: str) -> None:
    """SQL stores: events appended inside the caller's transaction commit or roll back
    with the caller's other rows."""
    if url == "memory://":
        pytest.skip("append_in is the SQL stores' (the memory store has no transactions)")
    async with open_store(url) as store:
        db = store.db  # type: ignore[attr-defined]
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE es_side (id TEXT PRIMARY KEY)")
        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                await store.append_in(tx, "u", envs(2), 0)  # type: ignore[attr-defined]
                await tx.execute("INSERT INTO es_side (id) VALUES ('one')")
                raise RuntimeError("the unit of work failed")
        assert await store.stream_version("u") == 0 and await store.last_position() == 0
        async with db.transaction() as tx:
            await store.append_in(tx, "u", envs(2), 0)  # type: ignore[attr-defined]
            await tx.execute("INSERT INTO es_side (id) VALUES ('one')")
        assert await store.stream_version("u") == 2
        with pytest.raises(ConcurrencyError):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO es_side (id) VALUES ('two')")
                await store.append_in(tx, "u", envs(1), 0)  # type: ignore[attr-defined]
        async with db.transaction() as tx:
            assert await tx.fetch("SELECT id FROM es_side") == [("one",)]
        assert await store.append("u", [], 2) == []
