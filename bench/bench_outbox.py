"""Outbox relay throughput on PostgreSQL: rows/s published and marked sent, with one
and with two relays, the in-memory broker as the bus's target.

::

    python bench/bench_outbox.py                          # 20,000 rows, 100 keys, 1 and 2 relays
    python bench/bench_outbox.py --rows 50000 --keys 1000 --batch 1000 --relays 1 2 4
    python bench/bench_outbox.py --url postgresql://postgres:postgres@127.0.0.1:5432/test

Each case gets a fresh database: the rows are written first through units of work
(``publish_many`` inside ``outbox.unit_of_work()``, 500 per transaction; the
write rate is shown too), then the relays run.
Every relay is a process of its own with its own connection pool, as in
production; the clock starts when all are connected and stops when the last one
finds nothing left to publish. The broker is ``memory://...?encode=false`` (in
each relay's process), so the figure is the relay's cost (claim, decode the
stored envelope, publish, mark sent, commit), not a broker's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import asyncpg

from eventbus import Event, EventBus
from eventbus.patterns.outbox import Outbox, OutboxRelay
from eventbus.patterns.sql import Database

DEFAULT_URL = os.environ.get(
    "EVENTBUS_TEST_POSTGRES_URL", "postgresql://postgres:postgres@127.0.0.1:5432/test"
)


class OrderPlaced(Event, type="bench.outbox.order-placed", topic="bench-outbox", version=1):
    order_id: str
    n: int


@asynccontextmanager
async def fresh_database(admin_url: str) -> AsyncIterator[str]:
    name = f"bench_outbox_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlsplit(admin_url)._replace(path=f"/{name}").geturl()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def fill(outbox: Outbox, bus: EventBus, rows: int, keys: int) -> float:
    started = time.perf_counter()
    for start in range(0, rows, 500):
        async with outbox.unit_of_work():
            for key in range(keys):
                chunk = [
                    OrderPlaced(order_id=f"o-{key}", n=n)
                    for n in range(start, min(rows, start + 500))
                    if n % keys == key
                ]
                if chunk:
                    await bus.publish_many(chunk, key=f"o-{key}")
    return rows / (time.perf_counter() - started)


async def case(
    admin_url: str, rows: int, keys: int, batch: int, relays: int
) -> tuple[float, float]:
    async with fresh_database(admin_url) as url:
        db = await Database.connect(url)
        outbox = Outbox(db)
        await outbox.setup()
        bus = EventBus(
            f"memory://bench-{uuid.uuid4().hex}?encode=false",
            publish_middleware=[outbox.middleware],
        )
        async with bus:
            write_rate = await fill(outbox, bus, rows, keys)
        await db.close()
        # Each relay is a process of its own (as in production, and so two relays
        # get two cores): started, connected, then all told to go at once.
        children = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--relay-only",
                url,
                "--batch",
                str(batch),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            for _ in range(relays)
        ]
        for child in children:
            assert child.stdout is not None
            assert (await child.stdout.readline()).strip() == b"ready"
        started = time.perf_counter()
        for child in children:
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        outputs = [await child.communicate() for child in children]
        elapsed = time.perf_counter() - started
        published = sum(int(out.split()[-1]) for out, _ in outputs)
        assert published == rows, f"{published} published for {rows} rows"
        return write_rate, rows / elapsed


async def relay_only(url: str, batch: int) -> None:
    """One relay process: publish until no row is unsent, print how many it published."""
    db = await Database.connect(url)
    bus = EventBus(f"memory://bench-{uuid.uuid4().hex}?encode=false")
    relay = OutboxRelay(Outbox(db), bus, batch_size=batch, poll_interval=0.01)
    async with bus:
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        while True:
            count = await relay.publish_pending()
            if count == 0 and not await relay.outbox.pending():
                break
    await db.close()
    print(f"published {relay.health().published}", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=DEFAULT_URL, help="PostgreSQL server (admin database)")
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=100, help="distinct partition keys (streams)")
    parser.add_argument("--batch", type=int, default=500, help="rows per relay transaction")
    parser.add_argument("--relays", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--relay-only", metavar="DB_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay_only:
        await relay_only(args.relay_only, args.batch)
        return
    print(
        f"{args.rows} rows over {args.keys} keys, batch {args.batch}, PostgreSQL "
        f"{urlsplit(args.url).hostname}, broker memory:// (encode=false)"
    )
    print(f"{'relays':>6}  {'written rows/s':>15}  {'relayed rows/s':>15}")
    for relays in args.relays:
        written, relayed = await case(args.url, args.rows, args.keys, args.batch, relays)
        print(f"{relays:>6}  {written:>15,.0f}  {relayed:>15,.0f}")


if __name__ == "__main__":
    asyncio.run(main())
