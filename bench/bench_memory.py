"""Events/s through eventbus's full middleware chain on ``memory://``, against the
same workload through FastStream's in-memory test broker (``TestKafkaBroker``).

::

    python bench/bench_memory.py --events 20000 --repeat 3

Each case publishes N pydantic events (built beforehand, so both sides serialize
and validate them inside the timed window) and counts them in a handler that
takes the model; the time is from the first publish to the last handled event.
Every case runs once as warm-up, then ``--repeat`` times; the table shows the
best and the median, and the ratio of eventbus to FastStream (best against best).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import logging
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from eventbus import Event, EventBus, MemoryIdempotencyStore
from eventbus.memory import MemoryBroker


class Tick(Event, type="bench.tick", topic="bench.ticks"):
    """A small, realistic event: a few scalars and a short list."""

    seq: int
    order_id: str
    amount_cents: int
    tags: list[str]


Case = Callable[[Sequence[Tick]], Awaitable[float]]


def make_events(n: int) -> list[Tick]:
    """``n`` distinct events, built before any timing starts."""
    return [
        Tick(seq=i, order_id=f"ord-{i:08d}", amount_cents=i % 10_000, tags=["a", "b"])
        for i in range(n)
    ]


def chunks(events: Sequence[Tick], size: int) -> list[Sequence[Tick]]:
    """``events`` cut into publish batches of ``size``."""
    return [events[i : i + size] for i in range(0, len(events), size)]


async def eventbus_case(
    events: Sequence[Tick], *, chunk: int, idempotency: bool, timeout: float = 120.0
) -> float:
    """Default chain (correlation, dead-letter, retry), optionally + idempotency."""
    name = f"bench-{uuid.uuid4().hex}"
    bus = EventBus(
        f"memory://{name}",
        source="bench",
        idempotency=MemoryIdempotencyStore() if idempotency else None,
    )
    n = len(events)
    count = 0
    finished = 0.0
    done = asyncio.Event()

    @bus.subscribe(Tick, group="bench")
    async def handle(event: Tick) -> None:
        nonlocal count, finished
        count += 1
        if count == n:
            finished = time.perf_counter()
            done.set()

    try:
        async with bus:
            started = time.perf_counter()
            await asyncio.gather(*(bus.publish_many(part) for part in chunks(events, chunk)))
            await asyncio.wait_for(done.wait(), timeout)
    finally:
        # memory://<name> brokers live for the process; drop this one so earlier
        # runs' retained logs don't weigh on later runs (GC).
        MemoryBroker._brokers.pop(name, None)
    assert count == n, f"eventbus handled {count} of {n}"
    return finished - started


async def faststream_case(events: Sequence[Tick], *, chunk: int) -> float:
    """FastStream KafkaBroker under TestKafkaBroker: publish delivers in memory."""
    from faststream.kafka import KafkaBroker, TestKafkaBroker

    # No per-message log lines (eventbus logs none either): the fastest FastStream setup.
    broker = KafkaBroker(logger=None)
    topic = f"bench-{uuid.uuid4().hex}"
    n = len(events)
    count = 0
    finished = 0.0

    @broker.subscriber(topic)
    async def handle(event: Tick) -> None:
        nonlocal count, finished
        count += 1
        if count == n:
            finished = time.perf_counter()

    async with TestKafkaBroker(broker) as test_broker:
        started = time.perf_counter()
        for part in chunks(events, chunk):
            await asyncio.gather(*(test_broker.publish(event, topic) for event in part))
    assert count == n, f"FastStream handled {count} of {n}"
    return finished - started


@dataclass
class Result:
    """The timed runs of one case."""

    name: str
    events: int
    seconds: list[float]

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def rate(self) -> float:
        """Events/s of the best run."""
        return self.events / self.best

    @property
    def median_rate(self) -> float:
        return self.events / statistics.median(self.seconds)


async def measure(name: str, case: Case, events: Sequence[Tick], repeat: int) -> Result:
    await case(events[: max(1, len(events) // 10)])  # warm-up: imports, lazy setup, caches
    seconds: list[float] = []
    for _ in range(repeat):
        gc.collect()
        seconds.append(await case(events))
    return Result(name, len(events), seconds)


async def main_async(args: argparse.Namespace) -> int:
    events = make_events(args.events)
    cases: dict[str, Case] = {
        "eventbus (corr+dlq+retry)": lambda ev: eventbus_case(
            ev, chunk=args.chunk, idempotency=False
        ),
        "eventbus (+idempotency)": lambda ev: eventbus_case(
            ev, chunk=args.chunk, idempotency=True
        ),
        "faststream TestKafkaBroker": lambda ev: faststream_case(ev, chunk=args.chunk),
    }
    selected = {k: v for k, v in cases.items() if not args.only or args.only in k}
    results = [await measure(name, case, events, args.repeat) for name, case in selected.items()]

    print(
        f"\n{args.events} events, best of {args.repeat} after warm-up, chunk {args.chunk}; "
        f"python {platform.python_version()}, pydantic {importlib.metadata.version('pydantic')}, "
        f"faststream {importlib.metadata.version('faststream')}"
    )
    print(f"{'case':<30} {'best s':>8} {'events/s':>10} {'median/s':>10} {'vs faststream':>14}")
    reference = next((r for r in results if r.name.startswith("faststream")), None)
    for result in results:
        ratio = f"{result.rate / reference.rate:.2f}x" if reference else "-"
        print(
            f"{result.name:<30} {result.best:>8.3f} {result.rate:>10,.0f} "
            f"{result.median_rate:>10,.0f} {ratio:>14}"
        )
    if reference is not None and args.target:
        below = [r for r in results if r is not reference and r.rate < args.target * reference.rate]
        if below:
            print(f"\nbelow the {args.target:g}x target: {', '.join(r.name for r in below)}")
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case")
    parser.add_argument("--chunk", type=int, default=500, help="events per publish batch")
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    parser.add_argument(
        "--target", type=float, default=0.0, help="exit 1 if eventbus < TARGET x FastStream"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
