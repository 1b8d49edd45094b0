"""Idempotency stores (claims with owners, expiry, purge, close) and the Idempotency step
seen through the bus: the key includes the topic, store failures redeliver or ack."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from eventbus import Envelope, Event, EventBus, MemoryAdapter, RetryPolicy
from eventbus.adapter import SubscribeOptions
from eventbus.deadletters import dlq_topic
from eventbus.middleware import (
    Claim,
    IdempotencyStore,
    MemoryIdempotencyStore,
    SQLiteIdempotencyStore,
    idempotency_key,
)

WAIT = 5.0


class Job(Event, type="test.idempotency.job", topic="test-idempotency-jobs"):
    n: int


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 20))


@asynccontextmanager
async def open_store(kind: str, tmp_path: Path) -> AsyncIterator[IdempotencyStore]:
    store: IdempotencyStore
    if kind == "memory":
        store = MemoryIdempotencyStore()
    else:
        store = SQLiteIdempotencyStore(str(tmp_path / f"{uuid.uuid4()}.db"))
    try:
        yield store
    finally:
        await store.close()


STORES = pytest.mark.parametrize("kind", ["memory", "sqlite"])


# -- stores ------------------------------------------------------------------------------


@STORES
def test_store_claim_complete_release(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_store(kind, tmp_path) as store:
            first = await store.claim("a", lease=60)
            assert first.status is Claim.CLAIMED and first.owner
            assert (await store.claim("a", lease=60)).status is Claim.IN_PROGRESS
            assert await store.release("a", first.owner)
            second = await store.claim("a", lease=60)
            assert second.status is Claim.CLAIMED and second.owner != first.owner
            assert second.owner is not None
            assert await store.complete("a", second.owner, ttl=60)
            assert (await store.claim("a", lease=60)).status is Claim.DONE
            assert (await store.claim("b", lease=-1)).status is Claim.CLAIMED
            assert (await store.claim("b", lease=60)).status is Claim.CLAIMED  # expired lease
            done = await store.claim("c", lease=60)
            assert done.owner is not None
            await store.complete("c", done.owner, ttl=-1)
            assert (await store.claim("c", lease=60)).status is Claim.CLAIMED  # ttl over

    run(scenario)


@STORES
def test_a_run_whose_lease_expired_cannot_release_the_next_runs_claim(
    kind: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with open_store(kind, tmp_path) as store:
            a = await store.claim("e1", lease=-1)  # A's handler outlives its lease
            b = await store.claim("e1", lease=60)  # so B claims and starts running
            assert b.status is Claim.CLAIMED
            assert a.owner is not None and b.owner is not None
            assert not await store.release("e1", a.owner)  # A fails: not its claim any more
            assert (await store.claim("e1", lease=60)).status is Claim.IN_PROGRESS
            assert await store.release("e1", b.owner)
            assert (await store.claim("e1", lease=60)).status is Claim.CLAIMED

    run(scenario)


@STORES
def test_release_never_forgets_a_done_id(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_store(kind, tmp_path) as store:
            claim = await store.claim("e2", lease=60)
            assert claim.owner is not None
            await store.complete("e2", claim.owner, ttl=3600)
            assert not await store.release("e2", claim.owner)  # a late failure path
            assert (await store.claim("e2", lease=60)).status is Claim.DONE

    run(scenario)


@STORES
def test_complete_after_the_lease_expired_marks_done_and_says_so(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_store(kind, tmp_path) as store:
            a = await store.claim("e3", lease=-1)
            b = await store.claim("e3", lease=60)
            assert a.owner is not None and b.owner is not None
            assert not await store.complete("e3", a.owner, ttl=3600)  # the effect happened
            assert (await store.claim("e3", lease=60)).status is Claim.DONE
            assert not await store.release("e3", b.owner)  # B failing keeps it done
            assert not await store.complete("e3", b.owner, ttl=3600)
            assert (await store.claim("e3", lease=60)).status is Claim.DONE

    run(scenario)


def test_memory_store_forgets_the_oldest_ids_past_max_entries() -> None:
    async def scenario() -> None:
        store = MemoryIdempotencyStore(max_entries=3)
        for key in ("a", "b", "c"):
            claim = await store.claim(key, lease=60)
            assert claim.status is Claim.CLAIMED and claim.owner is not None
            await store.complete(key, claim.owner, ttl=60)
        assert (await store.claim("d", lease=60)).status is Claim.CLAIMED  # "a" forgotten
        assert (await store.claim("a", lease=60)).status is Claim.CLAIMED
        assert (await store.claim("c", lease=60)).status is Claim.DONE
        await store.close()  # nothing to close; allowed all the same

    run(scenario)


def test_memory_store_forgets_done_ids_before_a_claim_held_now() -> None:
    async def scenario() -> None:
        store = MemoryIdempotencyStore(max_entries=2)
        held = await store.claim("held", lease=60)  # the oldest entry, its handler running
        assert held.owner is not None
        for key in ("b", "c"):
            claim = await store.claim(key, lease=60)
            assert claim.owner is not None
            await store.complete(key, claim.owner, ttl=60)
        # Past the bound the oldest done id went ("b"), not the claim held now: a
        # duplicate of "held" arriving while it runs is still held back.
        assert (await store.claim("held", lease=60)).status is Claim.IN_PROGRESS
        assert (await store.claim("c", lease=60)).status is Claim.DONE
        assert (await store.claim("b", lease=60)).status is Claim.CLAIMED
        assert await store.complete("held", held.owner, ttl=60)

    run(scenario)


def _rows(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT key FROM eventbus_idempotency")}


def test_sqlite_store_purges_expired_rows(tmp_path: Path) -> None:
    path = tmp_path / "purge.db"

    async def scenario() -> None:
        store = SQLiteIdempotencyStore(str(path), purge_interval=0.0)
        try:
            await store.claim("lease-ended", lease=-1)
            done = await store.claim("ttl-ended", lease=60)
            assert done.owner is not None
            await store.complete("ttl-ended", done.owner, ttl=-1)
            kept = await store.claim("kept", lease=60)
            assert kept.owner is not None
            assert _rows(path) == {"kept"}  # the last claim purged what had expired
            await store.claim("later", lease=-1)
            assert await store.purge() == 1
            assert _rows(path) == {"kept"}
        finally:
            await store.close()

    run(scenario)


def test_sqlite_store_purges_at_most_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "interval.db"

    async def scenario() -> None:
        store = SQLiteIdempotencyStore(str(path), purge_interval=3600)
        try:
            await store.claim("first", lease=-1)
            await store.claim("second", lease=-1)  # no purge yet: the interval has not passed
            assert _rows(path) == {"first", "second"}
        finally:
            await store.close()

    run(scenario)


def test_sqlite_store_is_shared_through_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")

    async def scenario() -> None:
        first, second = SQLiteIdempotencyStore(path), SQLiteIdempotencyStore(path)
        try:
            claim = await first.claim("x", lease=60)
            assert claim.owner is not None
            assert (await second.claim("x", lease=60)).status is Claim.IN_PROGRESS
            assert not await second.release("x", "someone-else")
            await first.complete("x", claim.owner, ttl=60)
            assert (await second.claim("x", lease=60)).status is Claim.DONE
        finally:
            await first.close()
            await second.close()

    run(scenario)


def test_sqlite_store_upgrades_a_file_written_before_claims_had_owners(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE eventbus_idempotency (key TEXT PRIMARY KEY, "
            "done INTEGER NOT NULL, expires_at REAL NOT NULL)"
        )
        db.execute("INSERT INTO eventbus_idempotency VALUES ('old', 1, 9e18)")

    async def scenario() -> None:
        store = SQLiteIdempotencyStore(str(path))
        try:
            assert (await store.claim("old", lease=60)).status is Claim.DONE
            new = await store.claim("new", lease=60)
            assert new.owner is not None
            assert await store.release("new", new.owner)
        finally:
            await store.close()

    run(scenario)


def test_a_closed_sqlite_store_lets_the_process_exit(tmp_path: Path) -> None:
    """aiosqlite's connection thread is not a daemon: close() must end it."""
    script = textwrap.dedent(f"""
        import asyncio
        from eventbus import SQLiteIdempotencyStore

        async def main() -> None:
            store = SQLiteIdempotencyStore({str(tmp_path / "exit.db")!r})
            claim = await store.claim("k", 60)
            await store.complete("k", claim.owner, 60)
            await store.close()
            await store.close()  # twice is harmless

        asyncio.run(main())
        print("done")
    """)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"


def test_sqlite_concurrent_claims_from_two_stores_claim_each_id_once(tmp_path: Path) -> None:
    path = str(tmp_path / "race.db")
    keys = [f"group:{uuid.uuid4()}" for _ in range(60)]

    async def scenario() -> list[tuple[str, Claim]]:
        stores = [SQLiteIdempotencyStore(path), SQLiteIdempotencyStore(path)]
        try:
            await asyncio.gather(*(s.claim("warmup", 60) for s in stores))
            results = await asyncio.gather(
                *(store.claim(key, 60) for key in keys for store in stores)
            )
            return list(
                zip([k for k in keys for _ in stores], [r.status for r in results], strict=True)
            )
        finally:
            for store in stores:
                await store.close()

    outcomes = asyncio.run(scenario())
    for key in keys:
        claims = [claim for k, claim in outcomes if k == key]
        assert sorted(c.value for c in claims) == ["claimed", "in_progress"], key


def test_sqlite_concurrent_claims_from_two_event_loops_claim_each_id_once(tmp_path: Path) -> None:
    """Two stores in two threads with their own loops, like two processes on one host."""
    path = str(tmp_path / "threads.db")
    keys = [f"g:{i}" for i in range(80)]
    results: dict[int, list[Claim]] = {}
    start = threading.Barrier(2)

    async def worker(index: int) -> None:
        store = SQLiteIdempotencyStore(path)
        try:
            await store.claim(f"warmup-{index}", 60)
            start.wait(timeout=WAIT)
            results[index] = [(await store.claim(key, 60)).status for key in keys]
        finally:
            await store.close()

    threads = [threading.Thread(target=asyncio.run, args=(worker(i),)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert set(results) == {0, 1}
    for position, key in enumerate(keys):
        pair = sorted(results[i][position].value for i in range(2))
        assert pair == ["claimed", "in_progress"], key


# -- through the bus ---------------------------------------------------------------------


def memory_url() -> str:
    return f"memory://{uuid.uuid4()}"


async def dlq_size(url: str, topic: str, group: str) -> int:
    found = MemoryAdapter(url).broker.topics.get(dlq_topic(topic, group))
    return 0 if found is None else len(found.log)


def test_the_key_names_topic_group_and_event() -> None:
    keys = {
        idempotency_key("orders", "g", "e1"),
        idempotency_key("audit", "g", "e1"),
        idempotency_key("orders", "h", "e1"),
        idempotency_key("orders", "g", "e2"),
    }
    assert len(keys) == 4


def test_the_same_event_on_a_second_topic_is_handled_there_too() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url(), source="analytics", idempotency=MemoryIdempotencyStore())
        audit = f"audit-{uuid.uuid4()}"
        seen: asyncio.Queue[str] = asyncio.Queue()

        @bus.subscribe(Job)
        async def count(event: Job) -> None:
            await seen.put("jobs")

        @bus.subscribe(audit)
        async def record(envelope: Envelope) -> None:
            await seen.put("audit")

        async with bus:
            sent = await bus.publish(Job(n=1))
            assert await asyncio.wait_for(seen.get(), WAIT) == "jobs"
            await bus.publish_envelopes(audit, [sent])  # the same event, forwarded
            assert await asyncio.wait_for(seen.get(), WAIT) == "audit"

    run(scenario)


class DownStore(MemoryIdempotencyStore):
    """Refuses claims until ``up`` is set, like Redis during a restart."""

    def __init__(self) -> None:
        super().__init__()
        self.up = asyncio.Event()
        self.refused = 0
        self.refused_three = asyncio.Event()

    async def claim(self, key: str, lease: float):  # type: ignore[no-untyped-def]
        if not self.up.is_set():
            self.refused += 1
            if self.refused >= 3:
                self.refused_three.set()
            raise ConnectionError("redis: connection refused")
        return await super().claim(key, lease)


def test_a_store_outage_during_claim_redelivers_and_never_dead_letters() -> None:
    async def scenario() -> None:
        url, store = memory_url(), DownStore()
        bus = EventBus(url, idempotency=store, retry=RetryPolicy(max_attempts=1))
        ran: asyncio.Queue[int] = asyncio.Queue()

        @bus.subscribe(Job, group="g")
        async def handle(event: Job) -> None:
            await ran.put(event.n)

        async with bus:
            for n in range(3):
                await bus.publish(Job(n=n))
            await asyncio.wait_for(store.refused_three.wait(), WAIT)  # all met the outage
            assert ran.empty()
            store.up.set()
            handled = [await asyncio.wait_for(ran.get(), WAIT) for _ in range(3)]
        assert sorted(handled) == [0, 1, 2]
        assert await dlq_size(url, Job.default_topic(), "g") == 0

    run(scenario)


class CannotComplete(MemoryIdempotencyStore):
    async def complete(self, key: str, owner: str, ttl: float) -> bool:
        raise sqlite3.OperationalError("database is locked")


def test_a_store_failing_to_complete_acks_the_handled_message_and_logs_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        url = memory_url()
        bus = EventBus(url, idempotency=CannotComplete())
        effects: asyncio.Queue[int] = asyncio.Queue()

        @bus.subscribe(Job, group="g")
        async def charge(event: Job) -> None:
            await effects.put(event.n)

        async with bus:
            sent = await bus.publish(Job(n=7))
            assert await asyncio.wait_for(effects.get(), WAIT) == 7
        # Acked: the group has nothing left to hand out, and nothing was dead-lettered.
        subscription = await MemoryAdapter(url).subscribe(
            Job.default_topic(), SubscribeOptions(group="g")
        )
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(aiter(subscription)), 0.3)
        finally:
            await subscription.close()
        assert effects.empty()
        assert await dlq_size(url, Job.default_topic(), "g") == 0
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert any("could not mark it done" in r.getMessage() for r in errors), errors
        assert any(getattr(r, "event_id", None) == sent.id for r in errors)

    with caplog.at_level(logging.INFO):
        run(scenario)
