"""Single-event latency: one awaited ``publish`` at a time, publish -> handler entry.

Each sample is the time from calling ``publish`` until the handler has the
validated event (its first line reads the clock); the next publish starts only
after the previous event was handled and its publish returned. A warm-up
(``max(50, round_trips // 10)`` round trips) runs first and is not kept.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from runner import Tick, make_events, percentile

from eventbus import EventBus


def warmup_for(round_trips: int) -> int:
    return max(50, round_trips // 10)


async def bus_latency(
    url: str,
    topic: str,
    round_trips: int,
    *,
    concurrency: int = 1,
    timeout: float = 60.0,
    start_from: Literal["earliest", "latest"] = "earliest",
) -> list[float]:
    """Seconds per lone ``bus.publish`` -> handler, ``round_trips`` samples (``start_from``
    "latest" where the broker keeps no history, SQS)."""
    warmup = warmup_for(round_trips)
    events = make_events(warmup + round_trips)
    arrived: asyncio.Queue[float] = asyncio.Queue()
    bus = EventBus.from_url(url, source="bench")

    @bus.subscribe(
        topic,
        group=f"bench-latency-{uuid.uuid4().hex[:12]}",
        concurrency=concurrency,
        start_from=start_from,
    )
    async def handle(event: Tick) -> None:
        arrived.put_nowait(time.perf_counter())

    samples: list[float] = []
    async with bus:
        for index, event in enumerate(events):
            started = time.perf_counter()
            await bus.publish(event, topic=topic)
            handled = await asyncio.wait_for(arrived.get(), timeout)
            if index >= warmup:
                samples.append(handled - started)
    return samples


@dataclass(frozen=True)
class Latency:
    name: str
    samples: Sequence[float]

    def row(self) -> str:
        s = self.samples
        ms = 1000.0
        return (
            f"{self.name:<40} {len(s):>6} {percentile(s, 0.50) * ms:>9.3f} "
            f"{percentile(s, 0.99) * ms:>9.3f} {statistics.fmean(s) * ms:>9.3f} "
            f"{max(s) * ms:>9.3f}"
        )

    def as_dict(self) -> dict[str, float]:
        s = self.samples
        return {
            "round_trips": len(s),
            "p50_ms": percentile(s, 0.5) * 1e3,
            "p99_ms": percentile(s, 0.99) * 1e3,
            "mean_ms": statistics.fmean(s) * 1e3,
            "max_ms": max(s) * 1e3,
        }


def print_latencies(title: str, rows: Sequence[Latency], reference: str | None = None) -> None:
    print(f"\n{title}")
    print(
        f"{'contender':<40} {'trips':>6} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9} {'max ms':>9}"
    )
    for row in rows:
        print(row.row())
    by_name = {r.name: r for r in rows}
    if reference is not None and reference in by_name:
        ref = by_name[reference]
        for row in rows:
            same_broker = reference.split()[0] == "raw" and "memory" not in row.name
            if row.name != reference and row.name.startswith("eventbus") and same_broker:
                p99 = percentile(row.samples, 0.99) / percentile(ref.samples, 0.99)
                p50 = percentile(row.samples, 0.5) / percentile(ref.samples, 0.5)
                print(f"{row.name} / {reference}: p50 {p50:.2f}x, p99 {p99:.2f}x")
