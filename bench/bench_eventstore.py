"""Event store throughput: eventbus's stores beside the ``eventsourcing`` library's.

::

    python bench/bench_eventstore.py                        # memory, SQLite, PostgreSQL
    python bench/bench_eventstore.py --streams 100 --per-stream 50 --stores sqlite
    python bench/bench_eventstore.py --pg-url postgresql://postgres:postgres@127.0.0.1:5432/test

The same work for every contender, one after the other in one process, each on
its own fresh database (SQLite file in a temporary directory; a PostgreSQL
database created for the run and dropped after):

- **store append**: ``--streams`` streams of ``--per-stream`` events, appended 10
  events per call (eventbus ``store.append(stream, 10 envelopes, expected_version)``;
  eventsourcing ``recorder.insert_events(10 stored events)`` on its application
  recorder), the events built before the clock starts;
- **store load**: read every stream back (eventbus ``read_stream``, which also
  parses each envelope; eventsourcing ``select_events``, raw bytes);
- **aggregate save/load**: an aggregate recording 10 events per save, saved
  through the repository, then each loaded (replayed) by id (eventbus
  ``Repository.save``/``load``; eventsourcing ``Application.save`` and
  ``repository.get``), both decoding typed events and applying them.

Figures are events/s (higher is better), from one run: see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from es_support import (
    BATCH,
    add_work_arguments,
    fresh_postgres,
    postgres_env,
    print_table,
    rate,
    sqlite_env,
    total_events,
)

from eventbus import Event
from eventbus.envelope import Envelope
from eventbus.patterns.eventsourcing import (
    Aggregate,
    EventStore,
    MemoryEventStore,
    Repository,
    SQLEventStore,
    applies,
)

Row = dict[str, Any]


class BenchDeposited(Event, type="bench.deposited", topic="bench.accounts"):
    amount: int
    note: str


class BenchAccount(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.balance = 0

    @applies(BenchDeposited)
    def _deposited(self, event: BenchDeposited) -> None:
        self.balance += event.amount


# -- eventbus ----------------------------------------------------------------------------


async def eventbus_store(store: EventStore, streams: int, per_stream: int) -> tuple[float, float]:
    await store.setup()
    batches = [
        (
            f"s-{s}",
            [
                Envelope.create(
                    type="bench.deposited",
                    source="bench",
                    data=BenchDeposited(amount=i, note="x" * 20).to_bytes(),
                )
                for i in range(BATCH)
            ],
        )
        for s in range(streams)
        for _ in range(per_stream // BATCH)
    ]
    versions: dict[str, int] = {}
    start = time.perf_counter()
    for stream, envelopes in batches:
        version = versions.get(stream, 0)
        await store.append(stream, envelopes, version)
        versions[stream] = version + len(envelopes)
    append = time.perf_counter() - start
    start = time.perf_counter()
    loaded = 0
    for s in range(streams):
        loaded += len(await store.read_stream(f"s-{s}"))
    load = time.perf_counter() - start
    total = total_events(streams, per_stream)
    assert loaded == total, (loaded, total)
    return rate(total, append), rate(total, load)


async def eventbus_aggregates(
    store: EventStore, streams: int, per_stream: int
) -> tuple[float, float]:
    repo = Repository(store, BenchAccount)
    start = time.perf_counter()
    for s in range(streams):
        account = BenchAccount(f"a-{s}")
        for _ in range(per_stream // BATCH):
            for i in range(BATCH):
                account.record(BenchDeposited(amount=i, note="x" * 20))
            await repo.save(account)
    save = time.perf_counter() - start
    start = time.perf_counter()
    for s in range(streams):
        account = await repo.load(f"a-{s}")
        assert account.version == per_stream // BATCH * BATCH
    load = time.perf_counter() - start
    total = total_events(streams, per_stream)
    return rate(total, save), rate(total, load)


async def run_eventbus(
    name: str, open_store: Callable[[], Any], streams: int, per_stream: int
) -> Row:
    store = await open_store()
    try:
        append, load = await eventbus_store(store, streams, per_stream)
        save, get = await eventbus_aggregates(store, streams, per_stream)
    finally:
        await store.close()
    return {
        "contender": "eventbus",
        "store": name,
        "append": append,
        "load": load,
        "save": save,
        "get": get,
    }


# -- eventsourcing -----------------------------------------------------------------------


@functools.cache
def es_account() -> Any:
    """The eventsourcing aggregate (defined once: the library registers it by topic)."""
    from eventsourcing.domain import Aggregate as ESAggregate
    from eventsourcing.domain import event

    class ESAccount(ESAggregate):
        def __init__(self) -> None:
            self.balance = 0

        @event("Deposited")
        def deposit(self, amount: int, note: str) -> None:
            self.balance += amount

    return ESAccount


def run_eventsourcing(name: str, env: dict[str, str], streams: int, per_stream: int) -> Row:
    from eventsourcing.application import Application
    from eventsourcing.persistence import StoredEvent

    ESAccount = es_account()
    app = Application(env=env)
    recorder = app.recorder
    state = json.dumps({"amount": 1, "note": "x" * 20}).encode()
    ids = [uuid.uuid4() for _ in range(streams)]
    batches = [
        [StoredEvent(ids[s], b * BATCH + i + 1, "bench:Deposited", state) for i in range(BATCH)]
        for s in range(streams)
        for b in range(per_stream // BATCH)
    ]
    total = len(batches) * BATCH
    start = time.perf_counter()
    for batch in batches:
        recorder.insert_events(batch)
    append = rate(total, time.perf_counter() - start)
    start = time.perf_counter()
    loaded = sum(len(recorder.select_events(i)) for i in ids)
    load = rate(total, time.perf_counter() - start)
    assert loaded == total, (loaded, total)

    # The created event counts as one of each aggregate's first ten.
    start = time.perf_counter()
    accounts = []
    for _ in range(streams):
        account = ESAccount()
        for b in range(per_stream // BATCH):
            for _i in range(BATCH - 1 if b == 0 else BATCH):
                account.deposit(1, "x" * 20)
            app.save(account)
        accounts.append(account.id)
    save = rate(total, time.perf_counter() - start)
    start = time.perf_counter()
    for account_id in accounts:
        assert app.repository.get(account_id).version == per_stream // BATCH * BATCH
    get = rate(total, time.perf_counter() - start)
    app.close()
    return {
        "contender": "eventsourcing",
        "store": name,
        "append": append,
        "load": load,
        "save": save,
        "get": get,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_work_arguments(parser, streams=200, stores="memory,sqlite,postgres")
    args = parser.parse_args()
    stores = args.stores.split(",")
    rows: list[Row] = []
    work = (args.streams, args.per_stream)
    if "memory" in stores:
        rows.append(await run_eventbus("memory", _opener(MemoryEventStore), *work))
        rows.append(
            run_eventsourcing("memory", {"PERSISTENCE_MODULE": "eventsourcing.popo"}, *work)
        )
    if "sqlite" in stores:
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite:///{folder}/eventbus.db"
            rows.append(await run_eventbus("sqlite", lambda: SQLEventStore.connect(url), *work))
            rows.append(
                run_eventsourcing("sqlite", sqlite_env(f"{folder}/eventsourcing.db"), *work)
            )
    if "postgres" in stores:
        async with fresh_postgres(args.pg_url, "bench_es") as url:
            rows.append(await run_eventbus("postgres", lambda: SQLEventStore.connect(url), *work))
        async with fresh_postgres(args.pg_url, "bench_es") as url:
            rows.append(run_eventsourcing("postgres", postgres_env(url), *work))
    total = total_events(args.streams, args.per_stream)
    print(
        f"\n{total} events per contender: {args.streams} streams x {args.per_stream}, "
        f"{BATCH} events per append/save; events/s (higher is better)\n"
    )
    print_table(
        ("store", "contender", "store append", "store load", "aggregate save", "aggregate load"),
        [
            (row["store"], row["contender"], row["append"], row["load"], row["save"], row["get"])
            for row in rows
        ],
    )


def _opener(factory: Callable[[], EventStore]) -> Callable[[], Any]:
    async def open_store() -> EventStore:
        return factory()

    return open_store


if __name__ == "__main__":
    asyncio.run(main())
