"""Events/s through eventbus's full middleware chain on ``memory://``, against the
same workload through FastStream's in-memory test broker (``TestKafkaBroker``).

::

    python bench/bench_memory.py --events 20000 --repeat 3
    python bench/bench_memory.py --stages       # per-stage cost table (us per event)
    python bench/bench_memory.py --latency      # p50/p99 of one awaited publish at a time
    python bench/bench_memory.py --rss          # RSS every 200k events, 1M through the chain

Each case publishes N pydantic events (built beforehand, so both sides serialize
and validate them inside the timed window) and counts them in a handler that
takes the model; the time is from the first publish to the last handled event.
Every case runs once as warm-up, then ``--repeat`` interleaved times; the table
shows the best and the median, and the ratio of eventbus to FastStream (best
against best). The contenders are in ``contenders/memory.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import logging
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import runner
import stages
from contenders import memory
from latency import Latency, bus_latency, print_latencies

from eventbus import EventBus

TARGET_RATIO = 20.0
"""Issue 7: the default chain at >= 20x FastStream's in-memory test broker ..."""
TARGET_RATE = 100_000.0
"""... and >= 100,000 events/s."""


async def throughput(args: argparse.Namespace, payload: dict[str, Any]) -> int:
    events = runner.make_events(args.events)
    selected = runner.select(memory.contenders(chunk=args.chunk), args.only)
    results = await runner.run(selected, events, repeat=args.repeat, warmup=args.warmup)
    runner.report(
        f"{args.events} events, best of {args.repeat} after warm-up, chunk {args.chunk}; "
        f"python {platform.python_version()}, pydantic {importlib.metadata.version('pydantic')}, "
        f"faststream {importlib.metadata.version('faststream')}",
        results,
        references=[memory.FASTSTREAM],
        targets=[(memory.FASTSTREAM, args.target or (TARGET_RATIO if args.check else 0.0))],
    )
    payload["throughput"] = [r.as_dict() for r in results]
    if args.target or args.check:
        target = args.target or TARGET_RATIO
        # Issue 7's targets are the default chain's; the other eventbus rows
        # (idempotency, no codec, batch) are shown beside it, not held to them.
        checked = [r for r in results if not r.ours or r.name == memory.EVENTBUS or not args.check]
        return runner.check(
            checked,
            [(memory.FASTSTREAM, target)],
            TARGET_RATE if args.check else 0.0,
            guard=runner.load_guard(args),
        )
    return 0


async def stage_table(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    events = runner.make_events(args.events)

    async def topic() -> str:
        return f"bench-stages-{time.perf_counter_ns()}"

    async def e2e(ev: Sequence[runner.Tick], factory: Any) -> runner.Timing:
        return await memory.eventbus_case(
            ev, chunk=args.chunk, idempotency=False, bus_factory=factory
        )

    urls: list[str] = []

    def url() -> str:
        urls.append(memory.memory_url())
        return urls[-1]

    try:
        table = await stages.measure(
            url,
            topic,
            events,
            e2e,
            wire=memory.wire_for(url()),
            chunk=args.chunk,
            repeat=args.repeat,
            subscribe_first=True,
        )
    finally:
        for used in urls:
            memory.forget(used)
    stages.print_table(
        f"per-stage cost, CPU us per event in this process (N={args.events}, "
        f"best of {args.repeat})",
        args.events,
        {"memory": table},
    )
    payload["stages"] = {"memory": stages.as_dict(args.events, table)}


async def latency(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    url = memory.memory_url()
    try:
        samples = await bus_latency(url, "bench-latency", args.round_trips)
    finally:
        memory.forget(url)
    rows = [Latency("eventbus memory (default chain)", samples)]
    print_latencies("publish -> handle latency, one awaited publish at a time", rows)
    payload["latency"] = {row.name: row.as_dict() for row in rows}


def rss_kib() -> int:
    """This process's resident set size (VmRSS), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


async def rss(args: argparse.Namespace, payload: dict[str, Any]) -> int:
    """Push ``--rss-events`` through the default chain; RSS every ``--rss-every`` handled.

    The publisher stays at most ``window`` events ahead of the handler, so the
    figures are the steady state, not a backlog. One pool of ``chunk`` events is
    published again and again (each publish gets a new envelope and id), so the
    benchmark itself holds nothing that grows. RSS is read after ``gc.collect()``.
    """
    total, every, window = args.rss_events, args.rss_every, 10 * args.chunk
    pool = runner.make_events(args.chunk)
    url = memory.memory_url()
    bus = EventBus(url, source="bench")
    handled = 0
    caught_up = asyncio.Event()
    wanted = 0

    @bus.subscribe(runner.Tick, group="bench")
    async def handle(event: runner.Tick) -> None:
        nonlocal handled
        handled += 1
        if handled >= wanted:
            caught_up.set()

    async def until(count: int) -> None:
        nonlocal wanted
        wanted = count
        while handled < count:
            caught_up.clear()
            await asyncio.wait_for(caught_up.wait(), 120.0)

    readings: list[tuple[int, int, float]] = []
    try:
        async with bus:
            gc.collect()
            baseline = rss_kib()
            started = time.perf_counter()
            print(f"{'events':>10} {'RSS MiB':>9} {'vs first':>9} {'events/s':>10}")
            print(f"{0:>10,} {baseline / 1024:>9.1f} {'':>9} {'':>10}")
            published = 0
            while published < total:
                await bus.publish_many(pool)
                published += len(pool)
                if published - handled > window:
                    await until(published - window)
                if published % every == 0:
                    await until(published)
                    gc.collect()
                    now = rss_kib()
                    rate = published / (time.perf_counter() - started)
                    first = readings[0][1] if readings else now
                    readings.append((published, now, rate))
                    print(
                        f"{published:>10,} {now / 1024:>9.1f} {now / first - 1:>+9.1%} "
                        f"{rate:>10,.0f}",
                        flush=True,
                    )
    finally:
        memory.forget(url)
    first, last = readings[0][1], readings[-1][1]
    flat = all(abs(r[1] / first - 1) <= 0.10 for r in readings)
    print(
        f"\nRSS from {readings[0][0]:,} to {readings[-1][0]:,} events: "
        f"{first / 1024:.1f} -> {last / 1024:.1f} MiB ({last / first - 1:+.1%}); "
        f"flat within +/-10%: {'yes' if flat else 'NO'}"
    )
    payload["rss"] = {
        "baseline_kib": baseline,
        "readings": [{"events": e, "rss_kib": k, "events_per_s": r} for e, k, r in readings],
        "flat_10pct": flat,
    }
    return 0 if flat or not args.check else 1


async def main_async(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"bench": "memory", "events": args.events, "repeat": args.repeat}
    status = 0
    if args.rss:
        status = await rss(args, payload)
    elif args.stages or args.latency:
        if args.stages:
            await stage_table(args, payload)
        if args.latency:
            await latency(args, payload)
    else:
        status = await throughput(args, payload)
    runner.write_json(args.json, payload)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    runner.add_common_arguments(parser, events=20_000, repeat=3)
    parser.add_argument(
        "--target", type=float, default=0.0, help="exit 1 if eventbus < TARGET x FastStream"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help=f"exit 1 below issue 7's targets for the default chain (>= {TARGET_RATIO:g}x "
        f"FastStream and >= {TARGET_RATE:,.0f}/s; with --rss: RSS flat within 10%%)",
    )
    parser.add_argument(
        "--rss",
        action="store_true",
        help="push --rss-events through the default chain, print RSS as it goes",
    )
    parser.add_argument("--rss-events", type=int, default=1_000_000)
    parser.add_argument("--rss-every", type=int, default=200_000)
    args = parser.parse_args(argv)
    if args.rss and args.rss_every % args.chunk:
        parser.error("--rss-every must be a multiple of --chunk")
    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
