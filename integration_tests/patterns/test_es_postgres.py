"""The event store on a real PostgreSQL (a fresh database per test): more writers for the
gap-safe reader, a late commit, the relay. The public suite's cases run in
test_store_suites_postgres.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from eventbus.envelope import Envelope
from eventbus.patterns.eventsourcing import EventRelay, SQLEventStore
from eventbus.patterns.sql import Database, Transaction
from eventbus.testing.patterns.event_store import envs, gap_safe_reader
from tests.patterns.stores import event_store_target

pytestmark = [pytest.mark.asyncio, pytest.mark.broker("postgres")]


async def test_gap_safe_reader_with_many_writers(postgres_url: str) -> None:
    await gap_safe_reader(event_store_target(postgres_url), writers=8, appends=15)


@pytest.mark.parametrize("killed", ["before", "after"])
async def test_a_killed_relay_loses_nothing(postgres_url: str, killed: str) -> None:
    from tests.patterns import test_es_relay

    await test_es_relay.test_a_killed_relay_loses_nothing(postgres_url, killed)


class NaiveStore:
    """What the store must not be: positions from a BIGSERIAL, read with
    ``position > after`` and no serialisation of appends. Kept here to prove the
    late-commit scenario below catches it."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def setup(self) -> None:
        async with self.db.transaction() as tx:
            await tx.execute(
                "CREATE TABLE naive (position BIGSERIAL PRIMARY KEY, "
                "stream_id TEXT NOT NULL, version INT NOT NULL, "
                "UNIQUE (stream_id, version))"
            )

    async def append_in(
        self, tx: Transaction, stream_id: str, events: list[Envelope], expected_version: int
    ) -> None:
        for offset, _ in enumerate(events, start=1):
            await tx.execute(
                "INSERT INTO naive (stream_id, version) VALUES ($1, $2)",
                stream_id,
                expected_version + offset,
            )

    async def append(self, stream_id: str, events: list[Envelope], expected_version: int) -> None:
        async with self.db.transaction() as tx:
            await self.append_in(tx, stream_id, events, expected_version)

    async def read_all(self, after: int = 0, limit: int = 500) -> list[SimpleNamespace]:
        async with self.db.transaction() as tx:
            rows = await tx.fetch(
                "SELECT position FROM naive WHERE position > $1 ORDER BY position LIMIT $2",
                after,
                limit,
            )
        return [SimpleNamespace(position=row[0]) for row in rows]


async def late_commit(store: Any) -> tuple[list[int], list[int]]:
    """Writer A takes its position first and commits last; B appends meanwhile; a
    reader reads while A is open and again after. Returns (what the reader saw,
    what the store holds)."""
    a_open, release_a = asyncio.Event(), asyncio.Event()

    async def writer_a() -> None:
        async with store.db.transaction() as tx:
            await store.append_in(tx, "late", envs(1), 0)
            a_open.set()
            await release_a.wait()

    a = asyncio.create_task(writer_a())
    await asyncio.wait_for(a_open.wait(), 5)
    b = asyncio.create_task(store.append("early", envs(1), 0))
    await asyncio.wait({b}, timeout=0.5)  # naive: B commits now; gap-safe: B waits for A
    seen = [s.position for s in await store.read_all(0)]
    release_a.set()
    await asyncio.wait_for(asyncio.gather(a, b), 5)
    seen += [s.position for s in await store.read_all(seen[-1] if seen else 0)]
    return seen, [s.position for s in await store.read_all(0)]


async def test_a_late_commit_is_not_skipped(postgres_url: str) -> None:
    store = await SQLEventStore.connect(postgres_url)
    await store.setup()
    try:
        seen, final = await late_commit(store)
    finally:
        await store.close()
    assert seen == final == [1, 2]


async def test_the_late_commit_scenario_catches_a_naive_store(postgres_url: str) -> None:
    db = await Database.connect(postgres_url)
    naive = NaiveStore(db)
    await naive.setup()
    try:
        seen, final = await late_commit(naive)
    finally:
        await db.close()
    assert final == [1, 2] and seen == [2]  # position 1 committed late and was skipped


async def test_a_refused_event_is_parked_and_the_other_streams_flow(postgres_url: str) -> None:
    from tests.patterns import test_es_relay

    await test_es_relay.test_a_refused_event_is_parked_and_the_other_streams_flow(postgres_url)


async def test_a_silent_database_shows_in_health_and_stop_returns_in_time(
    postgres_url: str,
) -> None:
    """Defect 14 for the followers: when the link to PostgreSQL goes silent the relay
    and a projection report the failure in health() within the URL's timeouts
    (instead of ok while hanging), and stop(timeout=...) returns in time."""
    from urllib.parse import urlsplit

    from eventbus import EventBus
    from eventbus.testing.faultproxy import FaultProxy
    from tests.patterns.cqrs_cases import Totals

    parts = urlsplit(postgres_url)
    host_port = f"{parts.hostname}:{parts.port or 5432}"
    with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        url = postgres_url.replace(host_port, f"127.0.0.1:{proxy.port}")
        db = await Database.connect(f"{url}?ping_timeout=0.5&connect_timeout=0.5&command_timeout=1")
        store = SQLEventStore(db)
        await store.setup()
        totals = Totals(db, name="totals", poll_interval=0.05)
        await totals.setup()
        bus = EventBus("memory://", source="silent")
        relay = EventRelay(store, bus, name="silent", poll_interval=0.05)
        try:
            async with bus:
                await relay.start()
                await totals.start(store)
                await asyncio.sleep(0.2)
                assert relay.health().ok and totals.health().ok
                await proxy.set_latency(3600)
                async with asyncio.timeout(5):
                    # health() is a snapshot with nothing to wait on: poll it.
                    while relay.health().ok or totals.health().ok:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                assert "DatabaseError" in (relay.health().last_error or "")
                assert "DatabaseError" in totals.health().last_error
                started = asyncio.get_running_loop().time()
                await relay.stop(timeout=1)
                await totals.stop(timeout=1)
                assert asyncio.get_running_loop().time() - started < 2.5
        finally:
            await proxy.set_latency(0)
            await db.close()
