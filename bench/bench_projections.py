"""Projection catch-up rate: eventbus's ``Projection`` beside the ``eventsourcing``
library's tracking-recorder view doing the same work.

::

    python bench/bench_projections.py                       # SQLite and PostgreSQL
    python bench/bench_projections.py --streams 50 --per-stream 100 --stores sqlite

Each contender fills its own fresh database (SQLite in a temporary directory; a
PostgreSQL database created for the run and dropped after) with ``--streams``
aggregates of ``--per-stream`` events (saved 10 per append), then the clock runs
while a projection catches up from zero to the end: it reads the events in
position order, decodes each to its typed event and upserts a per-stream count
into a view, its checkpoint committed with the view.

- eventbus: ``Projection.catch_up(store)``: ``read_all`` pages of ``--batch``
  events, one transaction per page (view rows and checkpoint together); and again
  with ``batch=1`` (``eventbus 1/tx``: a read and a transaction per event);
- eventsourcing: ``select_notifications`` pages of ``--batch``, each decoded by the
  application's mapper, then one transaction per event on a ``TrackingRecorder``
  subclass (view row and tracking record together), as its ``ProjectionRunner``
  processes events.

Figures are events/s (higher is better); see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from eventbus import Event, EventBus
from eventbus.events import Message
from eventbus.patterns.cqrs import Projection
from eventbus.patterns.eventsourcing import SQLEventStore
from eventbus.patterns.sql import Database, Transaction

BATCH = 10


class Counted(Event, type="bench.counted", topic="bench.counts"):
    stream: str
    note: str


class Counts(Projection):
    handles = (Counted,)

    async def create_tables(self, tx: Transaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS bench_view "
                         "(stream TEXT PRIMARY KEY, n BIGINT NOT NULL)")

    async def apply(self, event: Message, tx: Transaction) -> None:
        assert isinstance(event, Counted)
        await tx.execute("INSERT INTO bench_view VALUES ($1, 1) ON CONFLICT (stream) "
                         "DO UPDATE SET n = bench_view.n + 1", event.stream)


async def run_eventbus(url: str, streams: int, per_stream: int,
                       batch: int) -> tuple[float, float]:
    """Events/s with pages of ``batch`` (one transaction each), then with one event
    per page and transaction, like for like with eventsourcing's runner."""
    db = await Database.connect(url)
    store = SQLEventStore(db)
    await store.setup()
    bus = EventBus(source="bench")
    for s in range(streams):
        for b in range(per_stream // BATCH):
            await store.append(f"s-{s}", [
                bus.envelope_for(Counted(stream=f"s-{s}", note="x" * 20), parent=None)
                for _ in range(BATCH)], b * BATCH)
    total = streams * (per_stream // BATCH) * BATCH
    rates = []
    for name, size in (("bench", batch), ("bench-per-event", 1)):
        counts = Counts(db, name=name, batch=size)
        await counts.setup()
        start = time.perf_counter()
        applied = await counts.catch_up(store)
        rates.append(total / (time.perf_counter() - start))
        assert applied == total, (applied, total)
    await db.close()
    return rates[0], rates[1]


# -- eventsourcing -----------------------------------------------------------------------

@functools.cache
def es_classes() -> tuple[Any, Any, Any]:
    """The eventsourcing aggregate and view recorders (defined once: the library
    registers classes by topic)."""
    from eventsourcing.domain import Aggregate as ESAggregate
    from eventsourcing.domain import event
    from eventsourcing.postgres import PostgresTrackingRecorder
    from eventsourcing.sqlite import SQLiteTrackingRecorder

    class ESCounter(ESAggregate):
        def __init__(self) -> None:
            self.n = 0

        @event("Counted")
        def count(self, note: str) -> None:
            self.n += 1

    class SQLiteView(SQLiteTrackingRecorder):
        def construct_create_table_statements(self) -> list[str]:
            return [*super().construct_create_table_statements(),
                    "CREATE TABLE IF NOT EXISTS bench_view (stream TEXT PRIMARY KEY, n INTEGER)"]

        def count(self, stream: str, tracking: Any) -> None:
            with self.datastore.transaction(commit=True) as c:
                c.execute("INSERT INTO bench_view VALUES (?, 1) ON CONFLICT (stream) "
                          "DO UPDATE SET n = bench_view.n + 1", (stream,))
                self._insert_tracking(c, tracking)

    class PostgresView(PostgresTrackingRecorder):
        def __init__(self, datastore: Any, **kwargs: Any) -> None:
            super().__init__(datastore, **kwargs)
            from psycopg.sql import SQL

            self.sql_create_statements.append(
                SQL("CREATE TABLE IF NOT EXISTS bench_view (stream TEXT PRIMARY KEY, n BIGINT)"))

        def count(self, stream: str, tracking: Any) -> None:
            with self.datastore.transaction(commit=True) as curs:
                curs.execute("INSERT INTO bench_view VALUES (%s, 1) ON CONFLICT (stream) "
                             "DO UPDATE SET n = bench_view.n + 1", (stream,), prepare=True)
                self._insert_tracking(curs, tracking)

    return ESCounter, SQLiteView, PostgresView


def run_eventsourcing(env: dict[str, str], streams: int, per_stream: int,
                      batch: int) -> float:
    from eventsourcing.application import Application
    from eventsourcing.persistence import Tracking

    counter_class, sqlite_view, postgres_view = es_classes()
    app = Application(env=env)
    for _ in range(streams):
        counter = counter_class()
        for b in range(per_stream // BATCH):
            for _i in range(BATCH - 1 if b == 0 else BATCH):  # created counts as one
                counter.count("x" * 20)
            app.save(counter)
    postgres = env["PERSISTENCE_MODULE"].endswith("postgres")
    view = app.factory.tracking_recorder(postgres_view if postgres else sqlite_view)
    start = time.perf_counter()
    position, applied = view.max_tracking_id(app.name) or 0, 0
    while True:
        page = app.recorder.select_notifications(position, batch, inclusive_of_start=False)
        for notification in page:
            domain_event = app.mapper.to_domain_event(notification)
            view.count(str(domain_event.originator_id), Tracking(app.name, notification.id))
            applied += 1
        if len(page) < batch:
            break
        position = page[-1].id
    seconds = time.perf_counter() - start
    total = streams * (per_stream // BATCH) * BATCH
    assert applied == total, (applied, total)
    app.close()
    return total / seconds


# -- databases ---------------------------------------------------------------------------

@asynccontextmanager
async def fresh_postgres(server: str) -> AsyncIterator[str]:
    import asyncpg

    admin = await asyncpg.connect(server, timeout=5)
    name = f"bench_proj_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(server)._replace(path=f"/{name}"))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def postgres_env(url: str) -> dict[str, str]:
    parts = urlsplit(url)
    return {"PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": parts.path.lstrip("/"), "POSTGRES_HOST": parts.hostname or "",
            "POSTGRES_PORT": str(parts.port or 5432), "POSTGRES_USER": parts.username or "",
            "POSTGRES_PASSWORD": parts.password or ""}


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--per-stream", type=int, default=50, help="events per stream (x10)")
    parser.add_argument("--batch", type=int, default=200, help="events read per page")
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--pg-url", default=os.environ.get(
        "EVENTBUS_TEST_POSTGRES_URL", "postgresql://postgres:postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    work = (args.streams, args.per_stream, args.batch)
    rows: list[tuple[str, str, float]] = []
    if "sqlite" in args.stores:
        with tempfile.TemporaryDirectory() as folder:
            paged, single = await run_eventbus(f"sqlite:///{folder}/eventbus.db", *work)
            rows += [("sqlite", "eventbus", paged), ("sqlite", "eventbus 1/tx", single)]
            rows.append(("sqlite", "eventsourcing", run_eventsourcing({
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": f"{folder}/eventsourcing.db"}, *work)))
    if "postgres" in args.stores:
        async with fresh_postgres(args.pg_url) as url:
            paged, single = await run_eventbus(url, *work)
            rows += [("postgres", "eventbus", paged), ("postgres", "eventbus 1/tx", single)]
        async with fresh_postgres(args.pg_url) as url:
            rows.append(("postgres", "eventsourcing",
                         run_eventsourcing(postgres_env(url), *work)))
    total = args.streams * (args.per_stream // BATCH) * BATCH
    print(f"\n{total} events per contender ({args.streams} streams x {args.per_stream}), "
          f"pages of {args.batch}; projection catch-up, events/s (higher is better)\n")
    print("| store    | contender     | catch-up |")
    print("|----------|---------------|---------:|")
    for store, contender, value in rows:
        print(f"| {store:<9}| {contender:<14}| {value:>8,.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
