"""End-to-end events/s and publish->handle latency with a database as the broker
(``sqlite://``, ``postgres://``): eventbus against a hand-written SKIP LOCKED loop.

::

    python bench/bench_sql.py                                  # both, 5000 events, 3 repeats
    python bench/bench_sql.py --dialect sqlite --events 20000
    python bench/bench_sql.py --postgres-url postgresql://u:p@host/db --latency

SQLite runs on a fresh file in a temporary directory; PostgreSQL on a database this
script creates on the server (``EVENTBUS_TEST_POSTGRES_URL`` or 127.0.0.1:5432,
postgres/postgres) and drops afterwards. Repeats are interleaved (every contender
once per repeat) and the table shows the best and the median; the load average is
printed before and after, since the figures mean little on a busy machine.
``--latency`` times one awaited publish at a time until the handler has the event:
eventbus with publisher and consumer sharing the process's connection, eventbus with
the publisher on a connection of its own (as another process: SQLite's consumer
then learns of it by polling ``data_version``, PostgreSQL's by ``NOTIFY``), and the
raw loop (see ``contenders/sql.py``); a random pause of up to 50 ms comes before each
publish, so arrivals fall anywhere in SQLite's poll interval.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import runner
from contenders import sql
from latency import Latency, warmup_for

from eventbus import EventBus

THINK = 0.05
"""Seconds (at most, uniform) between lone publishes: a publish from another process
then lands anywhere in SQLite's poll interval, as in real traffic, instead of right
after a poll, which lock-step round trips would measure."""


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} cores)"


@asynccontextmanager
async def database(dialect: str, args: argparse.Namespace) -> AsyncIterator[sql.Database]:
    if dialect == "sqlite":
        with tempfile.TemporaryDirectory(prefix="eventbus-bench-") as scratch:
            yield sql.Database(args.sqlite_url or f"sqlite:///{scratch}/bench.db")
        return
    if args.postgres_url:
        yield sql.Database(args.postgres_url)
        return
    import asyncpg

    server = os.environ.get(
        "EVENTBUS_TEST_POSTGRES_URL", "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
    )
    name = f"eb_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield sql.Database(urlunsplit(urlsplit(server)._replace(path=f"/{name}")))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def bus_latency(consumer_url: str, publisher_url: str, trips: int) -> list[float]:
    """Lone ``publish`` -> handler entry; the two buses share a connection only when
    their URLs are the same."""
    topic = f"bench-latency-{uuid.uuid4().hex[:10]}"
    arrived: asyncio.Queue[float] = asyncio.Queue()
    consumer = EventBus.from_url(consumer_url, source="bench")

    @consumer.subscribe(topic, group="bench", start_from="earliest")
    async def handle(event: runner.Tick) -> None:
        arrived.put_nowait(time.perf_counter())

    publisher = EventBus.from_url(publisher_url, source="bench")
    samples: list[float] = []
    warmup = warmup_for(trips)
    async with consumer, publisher:
        for index, event in enumerate(runner.make_events(warmup + trips)):
            await asyncio.sleep(random.uniform(0, THINK))  # arrivals out of step with polls
            started = time.perf_counter()
            await publisher.publish(event, topic=topic)
            handled = await asyncio.wait_for(arrived.get(), 60)
            if index >= warmup:
                samples.append(handled - started)
    return samples


async def latency(db: sql.Database, args: argparse.Namespace, payload: dict[str, Any]) -> None:
    trips = args.round_trips
    other = db.bus_url("idle_poll=5.0")  # same settings, its own connection (another hub)
    cases = {
        f"eventbus {db.dialect}, same connection": lambda: bus_latency(db.url, db.url, trips),
        f"eventbus {db.dialect}, publisher apart": lambda: bus_latency(db.url, other, trips),
        f"{sql.RAW} {db.dialect}": lambda: sql.raw_latency(db, trips, warmup_for(trips), THINK),
    }
    runs: dict[str, list[Latency]] = {name: [] for name in cases}
    for repeat in range(args.repeat):  # interleaved, as the throughput runs
        for name, case in cases.items():
            print(f"latency {repeat + 1}/{args.repeat}: {name}", file=sys.stderr)
            runs[name].append(Latency(name, await case()))
    print(
        f"\npublish -> handle latency, {trips} round trips per run, median of "
        f"{args.repeat} interleaved runs; {load()}"
    )
    print(f"{'contender':<44} {'p50 ms':>9} {'p99 ms':>9}   (each run's p50 / p99)")
    out = []
    for name, rows in runs.items():
        p50s = [r.as_dict()["p50_ms"] for r in rows]
        p99s = [r.as_dict()["p99_ms"] for r in rows]
        each = " ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(p50s, p99s, strict=True))
        print(
            f"{name:<44} {statistics.median(p50s):>9.2f} {statistics.median(p99s):>9.2f}   {each}"
        )
        out.append({"name": name, "p50_ms": p50s, "p99_ms": p99s})
    payload.setdefault(db.dialect, {})["latency"] = out


async def main_async(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {}
    dialects = ["sqlite", "postgres"] if args.dialect == "both" else [args.dialect]
    for dialect in dialects:
        async with database(dialect, args) as db:
            print(f"{dialect}: {load()}", file=sys.stderr)
            before = load()
            if not args.latency_only:
                events = runner.make_events(args.events)
                selected = runner.select(
                    sql.contenders(db, chunk=args.chunk, concurrency=args.concurrency), args.only
                )
                results = await runner.run(selected, events, repeat=args.repeat, warmup=args.warmup)
                runner.report(
                    f"{dialect}: {args.events} events, {args.repeat} interleaved runs; "
                    f"eventbus concurrency {args.concurrency}, chunk {args.chunk}; "
                    f"before: {before}; after: {load()}",
                    results,
                    references=[f"{sql.RAW} {dialect}"],
                )
                payload.setdefault(dialect, {})["throughput"] = [r.as_dict() for r in results]
            if args.latency or args.latency_only:
                await latency(db, args, payload)
    runner.write_json(args.json, payload)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dialect", choices=["both", "sqlite", "postgres"], default="both")
    parser.add_argument("--sqlite-url", default="", help="default: a fresh temporary file")
    parser.add_argument(
        "--postgres-url",
        default="",
        help="default: a database created (and dropped) on the local server",
    )
    runner.add_common_arguments(parser, events=5_000, repeat=3)
    parser.add_argument("--latency-only", action="store_true", help="skip the throughput runs")
    parser.add_argument("--concurrency", type=int, default=8, help="eventbus workers")
    args = parser.parse_args(argv)
    args.round_trips = min(args.round_trips, 300) if args.round_trips == 500 else args.round_trips
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
