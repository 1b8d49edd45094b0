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
import tempfile
import time
from typing import Any

from es_support import (
    BATCH,
    add_work_arguments,
    fresh_postgres,
    postgres_env,
    print_table,
    sqlite_env,
    total_events,
)

from eventbus import Event, EventBus
from eventbus.events import Message
from eventbus.patterns.cqrs import Projection
from eventbus.patterns.eventsourcing import SQLEventStore
from eventbus.patterns.sql import Database, Transaction


class Counted(Event, type="bench.counted", topic="bench.counts"):
    stream: str
    note: str


class Counts(Projection):
    handles = (Counted,)

    async def create_tables(self, tx: Transaction) -> None:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS bench_view (stream TEXT PRIMARY KEY, n BIGINT NOT NULL)"
        )

    async def apply(self, event: Message, tx: Transaction) -> None:
        assert isinstance(event, Counted)
        await tx.execute(
            "INSERT INTO bench_view VALUES ($1, 1) ON CONFLICT (stream) "
            "DO UPDATE SET n = bench_view.n + 1",
            event.stream,
        )


async def run_eventbus(url: str, streams: int, per_stream: int, batch: int) -> tuple[float, float]:
    """Events/s with pages of ``batch`` (one transaction each), then with one event
    per page and transaction, like for like with eventsourcing's runner."""
    db = await Database.connect(url)
    store = SQLEventStore(db)
    await store.setup()
    bus = EventBus(source="bench")
    for s in range(streams):
        for b in range(per_stream // BATCH):
            await store.append(
                f"s-{s}",
                [
                    bus.envelope_for(Counted(stream=f"s-{s}", note="x" * 20), parent=None)
                    for _ in range(BATCH)
                ],
                b * BATCH,
            )
    total = total_events(streams, per_stream)
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
            return [
                *super().construct_create_table_statements(),
                "CREATE TABLE IF NOT EXISTS bench_view (stream TEXT PRIMARY KEY, n INTEGER)",
            ]

        def count(self, stream: str, tracking: Any) -> None:
            with self.datastore.transaction(commit=True) as c:
                c.execute(
                    "INSERT INTO bench_view VALUES (?, 1) ON CONFLICT (stream) "
                    "DO UPDATE SET n = bench_view.n + 1",
                    (stream,),
                )
                self._insert_tracking(c, tracking)

    class PostgresView(PostgresTrackingRecorder):
        def __init__(self, datastore: Any, **kwargs: Any) -> None:
            super().__init__(datastore, **kwargs)
            from psycopg.sql import SQL

            self.sql_create_statements.append(
                SQL("CREATE TABLE IF NOT EXISTS bench_view (stream TEXT PRIMARY KEY, n BIGINT)")
            )

        def count(self, stream: str, tracking: Any) -> None:
            with self.datastore.transaction(commit=True) as curs:
                curs.execute(
                    "INSERT INTO bench_view VALUES (%s, 1) ON CONFLICT (stream) "
                    "DO UPDATE SET n = bench_view.n + 1",
                    (stream,),
                    prepare=True,
                )
                self._insert_tracking(curs, tracking)

    return ESCounter, SQLiteView, PostgresView


def run_eventsourcing(env: dict[str, str], streams: int, per_stream: int, batch: int) -> float:
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
    total = total_events(streams, per_stream)
    assert applied == total, (applied, total)
    app.close()
    return total / seconds


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add_work_arguments(parser, streams=100, stores="sqlite,postgres")
    parser.add_argument("--batch", type=int, default=200, help="events read per page")
    args = parser.parse_args()
    work = (args.streams, args.per_stream, args.batch)
    rows: list[tuple[str, str, float]] = []
    if "sqlite" in args.stores:
        with tempfile.TemporaryDirectory() as folder:
            paged, single = await run_eventbus(f"sqlite:///{folder}/eventbus.db", *work)
            rows += [("sqlite", "eventbus", paged), ("sqlite", "eventbus 1/tx", single)]
            rows.append(
                (
                    "sqlite",
                    "eventsourcing",
                    run_eventsourcing(sqlite_env(f"{folder}/eventsourcing.db"), *work),
                )
            )
    if "postgres" in args.stores:
        async with fresh_postgres(args.pg_url, "bench_proj") as url:
            paged, single = await run_eventbus(url, *work)
            rows += [("postgres", "eventbus", paged), ("postgres", "eventbus 1/tx", single)]
        async with fresh_postgres(args.pg_url, "bench_proj") as url:
            rows.append(("postgres", "eventsourcing", run_eventsourcing(postgres_env(url), *work)))
    total = total_events(args.streams, args.per_stream)
    print(
        f"\n{total} events per contender ({args.streams} streams x {args.per_stream}), "
        f"pages of {args.batch}; projection catch-up, events/s (higher is better)\n"
    )
    print_table(("store", "contender", "catch-up"), rows)


if __name__ == "__main__":
    asyncio.run(main())
