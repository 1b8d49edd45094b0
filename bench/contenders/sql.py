"""Contenders on a database used as the broker (``sqlite://``, ``postgres://``): eventbus
and a hand-written queue loop on the same database doing the same work.

The work: publish N events, each confirmed (committed) when ``publish`` returns; take
them with a lease (PostgreSQL: ``FOR UPDATE SKIP LOCKED``), validate each into the
same pydantic model, acknowledge it (delete its row). The raw loop is what one
writes by hand for a single queue: one table, no groups, no positions, no per-key
order, no retries or dead letters; it takes 500 rows per claim and deletes them
with one statement. It is woken like eventbus's consumer: ``LISTEN/NOTIFY`` on
PostgreSQL, at once by the in-process publisher on SQLite (plus a 50 ms poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from runner import PROBE, Contender, Counter, Tick, Timing, chunks

from eventbus import EventBus

EVENTBUS = "eventbus"
RAW = "raw SKIP LOCKED loop"
LEASE = 30.0
BATCH = 500


@dataclass
class Database:
    """Where the contenders run: ``sqlite:///file`` or ``postgresql://...``."""

    url: str
    timeout: float = 120.0

    @property
    def dialect(self) -> str:
        return "sqlite" if self.url.startswith("sqlite") else "postgres"

    def bus_url(self, options: str = "") -> str:
        if not options:
            return self.url
        return f"{self.url}{'&' if '?' in self.url else '?'}{options}"

    def new_topic(self, who: str) -> str:
        return f"bench-{who}-{uuid.uuid4().hex[:12]}"


async def eventbus_case(
    db: Database, events: Sequence[Tick], *, chunk: int, concurrency: int
) -> Timing:
    """``EventBus.from_url`` with its defaults; ``publish_many`` chunks gathered at once."""
    topic = db.new_topic("eventbus")
    counter = Counter(len(events))
    bus = EventBus.from_url(db.url, source="bench")

    @bus.subscribe(topic, group="bench", concurrency=concurrency, start_from="earliest")
    async def handle(event: Tick) -> None:
        counter.see(event)

    async with bus:
        await bus.publish(PROBE, topic=topic)
        await counter.wait_probe(EVENTBUS, db.timeout)
        counter.start()
        await asyncio.gather(
            *(bus.publish_many(part, topic=topic) for part in chunks(events, chunk))
        )
        counter.mark_published()
        await counter.wait_done(EVENTBUS, db.timeout)
    return counter.timing()


class RawQueue:
    """The hand-written loop's table and statements, for one dialect."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.table = f"bench_raw_{uuid.uuid4().hex[:10]}"
        self.wake = asyncio.Event()
        self._pool: Any = None
        self._conn: Any = None
        self._listener: Any = None
        self._lock = asyncio.Lock()

    @property
    def pg(self) -> bool:
        return self.db.dialect == "postgres"

    async def open(self) -> None:
        if self.pg:
            import asyncpg

            dsn = self.db.url.partition("?")[0]
            self._pool = await asyncpg.create_pool(dsn, min_size=2, max_size=4)
            await self._pool.execute(
                f"CREATE TABLE {self.table} (id BIGSERIAL PRIMARY KEY, body BYTEA NOT NULL, "
                "leased_until DOUBLE PRECISION NOT NULL DEFAULT 0)"
            )
            self._listener = await asyncpg.connect(dsn)
            await self._listener.add_listener(self.table, lambda *_: self.wake.set())
        else:
            import aiosqlite

            path = self.db.url.partition("?")[0].removeprefix("sqlite:///")
            self._conn = await aiosqlite.connect(path, isolation_level=None)
            await self._conn.execute("PRAGMA journal_mode=WAL")
            await self._conn.execute(
                f"CREATE TABLE {self.table} (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "body BLOB NOT NULL, leased_until REAL NOT NULL DEFAULT 0)"
            )

    async def close(self) -> None:
        if self.pg:
            await self._listener.close()
            await self._pool.execute(f"DROP TABLE {self.table}")
            await self._pool.close()
        else:
            await self._conn.execute(f"DROP TABLE {self.table}")
            await self._conn.close()

    async def _sqlite_tx(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        async with self._lock:  # one connection: its transactions take turns
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = await work(self._conn)
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")
            return result

    async def send(self, bodies: Sequence[bytes]) -> None:
        """Insert and commit (the confirmation); then wake the consumer."""
        rows = [(body,) for body in bodies]
        if self.pg:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.executemany(f"INSERT INTO {self.table} (body) VALUES ($1)", rows)
                await conn.execute(f"NOTIFY {self.table}")
        else:
            await self._sqlite_tx(
                lambda c: c.executemany(f"INSERT INTO {self.table} (body) VALUES (?)", rows)
            )
            self.wake.set()

    async def claim(self) -> list[tuple[int, bytes]]:
        """Lease up to BATCH due rows (SKIP LOCKED on PostgreSQL)."""
        if self.pg:
            now = "extract(epoch from clock_timestamp())"
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(
                    f"UPDATE {self.table} SET leased_until = {now} + $1 WHERE id IN ("
                    f"SELECT id FROM {self.table} WHERE leased_until < {now} ORDER BY id "
                    f"LIMIT {BATCH} FOR UPDATE SKIP LOCKED) RETURNING id, body",
                    LEASE,
                )
            return [(r[0], r[1]) for r in rows]
        now = "((julianday('now') - 2440587.5) * 86400.0)"
        return [
            (r[0], r[1])
            for r in await self._sqlite_tx(
                lambda c: c.execute_fetchall(
                    f"UPDATE {self.table} SET leased_until = {now} + ? WHERE id IN (SELECT id FROM "
                    f"{self.table} WHERE leased_until < {now} ORDER BY id LIMIT {BATCH}) "
                    "RETURNING id, body",
                    (LEASE,),
                )
            )
        ]

    async def ack(self, ids: Sequence[int]) -> None:
        if self.pg:
            async with self._pool.acquire() as conn:
                await conn.execute(f"DELETE FROM {self.table} WHERE id = ANY($1)", list(ids))
        else:
            marks = ",".join("?" for _ in ids)
            await self._sqlite_tx(
                lambda c: c.execute(f"DELETE FROM {self.table} WHERE id IN ({marks})", tuple(ids))
            )

    async def consume(self, handle: Callable[[Tick], None], stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.wake.clear()
            rows = await self.claim()
            if not rows:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 0.05)
                continue
            for _, body in rows:
                handle(Tick.model_validate_json(body))
            await self.ack([row_id for row_id, _ in rows])


async def raw_case(db: Database, events: Sequence[Tick], *, chunk: int) -> Timing:
    """Each chunk inserted in its own transaction, gathered; one claim loop of 500."""
    queue = RawQueue(db)
    await queue.open()
    counter = Counter(len(events))
    consuming = asyncio.create_task(queue.consume(counter.see, counter.done))
    try:
        await queue.send([PROBE.to_bytes()])
        await counter.wait_probe(RAW, db.timeout)
        counter.start()
        await asyncio.gather(
            *(queue.send([e.to_bytes() for e in part]) for part in chunks(events, chunk))
        )
        counter.mark_published()
        await counter.wait_done(RAW, db.timeout)
    finally:
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        await queue.close()
    return counter.timing()


async def raw_latency(
    db: Database, round_trips: int, warmup: int, think: float = 0.0
) -> list[float]:
    """One awaited insert at a time -> the raw loop has the validated event."""
    queue = RawQueue(db)
    await queue.open()
    arrived: asyncio.Queue[float] = asyncio.Queue()
    stop = asyncio.Event()
    consuming = asyncio.create_task(
        queue.consume(lambda _: arrived.put_nowait(time.perf_counter()), stop)
    )
    samples: list[float] = []
    try:
        for index in range(warmup + round_trips):
            await asyncio.sleep(random.uniform(0, think))
            body = Tick(seq=index, order_id="lat", amount_cents=1, tags=[]).to_bytes()
            started = time.perf_counter()
            await queue.send([body])
            handled = await asyncio.wait_for(arrived.get(), db.timeout)
            if index >= warmup:
                samples.append(handled - started)
    finally:
        stop.set()
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        await queue.close()
    return samples


def contenders(db: Database, *, chunk: int, concurrency: int) -> list[Contender]:
    """What ``bench_sql.py`` runs, eventbus first."""
    return [
        Contender(
            f"{EVENTBUS} {db.dialect}",
            lambda ev: eventbus_case(db, ev, chunk=chunk, concurrency=concurrency),
            ours=True,
        ),
        Contender(f"{RAW} {db.dialect}", lambda ev: raw_case(db, ev, chunk=chunk)),
    ]
