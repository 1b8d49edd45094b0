"""The broker-independent half of the benchmarks: the workload, the clock, the table.

A broker's benchmark is a list of :class:`Contender` objects (see ``contenders/``),
each an async function that runs the whole workload once over the events it is
given and returns a :class:`Timing`. :func:`run` interleaves them (every repeat
runs every contender once, so machine noise hits all alike) after one untimed
warm-up each, and :func:`report` prints the best/median table and the ratios of
every eventbus contender against every reference.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from verdict import MIN_REPEATS, LoadGuard

from eventbus import Event

T = TypeVar("T")
PROBE_SEQ = -1
"""``seq`` of the one event a run may send before its clock starts (to warm a consumer)."""


class Tick(Event, type="bench.tick", topic="bench.ticks"):
    """A small, realistic event: a few scalars and a short list."""

    seq: int
    order_id: str
    amount_cents: int
    tags: list[str]


def make_events(n: int, start: int = 0) -> list[Tick]:
    """``n`` distinct events, built before any timing starts."""
    return [
        Tick(seq=i, order_id=f"ord-{i:08d}", amount_cents=i % 10_000, tags=["a", "b"])
        for i in range(start, start + n)
    ]


PROBE = Tick(seq=PROBE_SEQ, order_id="probe", amount_cents=0, tags=[])


def chunks(events: Sequence[T], size: int) -> list[Sequence[T]]:
    """``events`` cut into publish batches of ``size``."""
    return [events[i : i + size] for i in range(0, len(events), size)]


@dataclass(frozen=True)
class Timing:
    """One run: seconds until the last event was handled / until every publish returned."""

    total: float
    publish: float
    cpu: float = 0.0
    """CPU seconds this process spent in the same window (``time.process_time``)."""


@dataclass
class Counter:
    """What every contender's handler does with an event: count it, time the last.

    The probe event (``seq == PROBE_SEQ``) only says "the consumer is live";
    it is not counted.
    """

    expected: int
    count: int = 0
    started: float = 0.0
    published: float = 0.0
    finished: float = 0.0
    cpu_started: float = 0.0
    cpu_finished: float = 0.0
    probe_seen: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def see(self, event: Tick) -> None:
        if event.seq == PROBE_SEQ:
            self.probe_seen.set()
            return
        self.count += 1
        if self.count == self.expected:
            self.finished = time.perf_counter()
            self.cpu_finished = time.process_time()
            self.done.set()

    def start(self) -> None:
        """The clock starts: the first publish is next."""
        self.started = time.perf_counter()
        self.cpu_started = time.process_time()

    def mark_published(self) -> None:
        """Every publish has returned."""
        self.published = time.perf_counter()

    def timing(self) -> Timing:
        return Timing(
            self.finished - self.started,
            self.published - self.started,
            self.cpu_finished - self.cpu_started,
        )

    async def wait_probe(self, name: str, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.probe_seen.wait(), timeout)
        except TimeoutError:
            raise RuntimeError(
                f"{name}: the probe event was not consumed in {timeout:g}s"
            ) from None

    async def wait_done(self, name: str, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except TimeoutError:
            raise RuntimeError(
                f"{name}: only {self.count} of {self.expected} events handled in {timeout:g}s"
            ) from None


Run = Callable[[Sequence[Tick]], Awaitable[Timing]]


@dataclass(frozen=True)
class Contender:
    """One side of a comparison: a name, the run, and whether it is eventbus itself."""

    name: str
    run: Run
    ours: bool = False


@dataclass
class Result:
    """The timed runs of one contender."""

    name: str
    events: int
    ours: bool = False
    seconds: list[float] = field(default_factory=list)
    publish_seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)

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

    @property
    def publish_share(self) -> float:
        """In the best run: when the last publish returned, as a share of the total."""
        best = self.seconds.index(self.best)
        return self.publish_seconds[best] / self.best

    @property
    def cpu_per_event(self) -> float:
        """CPU seconds per event this process spent in the best run (0 if not measured)."""
        return self.cpu_seconds[self.seconds.index(self.best)] / self.events

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "events": self.events,
            "eventbus": self.ours,
            "seconds": self.seconds,
            "publish_seconds": self.publish_seconds,
            "cpu_seconds": self.cpu_seconds,
            "best_rate": self.rate,
            "median_rate": self.median_rate,
            "cpu_us_per_event": self.cpu_per_event * 1e6,
        }


def select(contenders: Iterable[Contender], only: str) -> list[Contender]:
    """The contenders whose name contains ``only`` (all when it is empty)."""
    return [c for c in contenders if not only or only in c.name]


LOAD_BEFORE_RUNS: list[float] = []
"""The 1-minute load average read before this process's first run: what the load guard
judges. Read later, it would count the bench's own work (a broker and this process
keep both cores busy), and a quiet machine would always look loaded."""


async def run(
    contenders: Sequence[Contender], events: Sequence[Tick], *, repeat: int, warmup: bool = True
) -> list[Result]:
    """Warm every contender up once on N/10 events, then ``repeat`` interleaved timed runs."""
    if not LOAD_BEFORE_RUNS:
        LOAD_BEFORE_RUNS.append(os.getloadavg()[0])
    results = [Result(c.name, len(events), c.ours) for c in contenders]
    if warmup:
        for contender in contenders:  # imports, connections, lazy setup, caches
            print(f"warm-up: {contender.name}", file=sys.stderr)
            await contender.run(events[: max(1, len(events) // 10)])
    for index in range(repeat):
        for contender, result in zip(contenders, results, strict=True):
            gc.collect()
            timing = await contender.run(events)
            result.seconds.append(timing.total)
            result.publish_seconds.append(timing.publish)
            result.cpu_seconds.append(timing.cpu)
            print(
                f"run {index + 1}/{repeat}: {contender.name}: {timing.total:.3f}s "
                f"({len(events) / timing.total:,.0f}/s; publishes done at {timing.publish:.3f}s)",
                file=sys.stderr,
            )
    return results


Target = tuple[str, float]
"""(name of a reference contender, the ratio eventbus must reach against it)."""


def report(
    header: str,
    results: Sequence[Result],
    targets: Sequence[Target] = (),
    references: Sequence[str] = (),
) -> None:
    """The best/median table, then every eventbus result against every reference."""
    print(f"\n{header}")
    width = max(28, *(len(r.name) for r in results)) if results else 28
    print(
        f"{'contender':<{width}} {'best s':>8} {'events/s':>10} {'median/s':>10} "
        f"{'published at':>13} {'CPU us/event':>13}"
    )
    for result in results:
        print(
            f"{result.name:<{width}} {result.best:>8.3f} {result.rate:>10,.0f} "
            f"{result.median_rate:>10,.0f} {result.publish_share:>13.0%} "
            f"{result.cpu_per_event * 1e6:>13.1f}"
        )
    by_name = {r.name: r for r in results}
    goals = dict(targets)
    others = [name for name in (*references, *goals) if name in by_name]
    others = list(dict.fromkeys(others))
    lines = []
    pairs = [(ours, other) for ours in results if ours.ours for other in others]
    label = max((len(f"{o.name} / {other}") for o, other in pairs), default=0)
    for ours, other in pairs:
        median = ours.median_rate / by_name[other].median_rate
        ratio = ours.rate / by_name[other].rate
        goal = f"   (target >= {goals[other]:g}x, on the median)" if goals.get(other) else ""
        lines.append(
            f"{f'{ours.name} / {other}':<{label}} median {median:>5.2f}x  best {ratio:>5.2f}x{goal}"
        )
    if lines:
        print()
        print("\n".join(lines))


def missed_targets(
    results: Sequence[Result], targets: Sequence[Target], min_rate: float = 0.0
) -> list[str]:
    """What every eventbus result misses, read on the medians of its repeats: a ratio
    below its target, or a median rate below ``min_rate``."""
    by_name = {r.name: r for r in results}
    missed = []
    for ours in (r for r in results if r.ours):
        if min_rate and ours.median_rate < min_rate:
            missed.append(f"{ours.name}: median {ours.median_rate:,.0f}/s < {min_rate:,.0f}/s")
        for other, target in targets:
            if not target or other not in by_name:
                continue
            ratio = ours.median_rate / by_name[other].median_rate
            if ratio < target:
                missed.append(f"{ours.name} vs {other}: median {ratio:.2f}x < {target:g}x")
    return missed


def check(
    results: Sequence[Result],
    targets: Sequence[Target],
    min_rate: float = 0.0,
    guard: LoadGuard | None = None,
) -> int:
    """Print what was missed and return the exit status: 1 when anything was, 2 when no
    verdict may be given (fewer than ``MIN_REPEATS`` repeats, or a loaded machine)."""
    guard = guard or LoadGuard.read()
    repeats = min((len(r.seconds) for r in results), default=0)
    print("\n" + guard.describe())
    if repeats < MIN_REPEATS:
        print(f"no verdict: {repeats} repeat(s), a verdict needs >= {MIN_REPEATS}")
        return 2
    if not guard.allows:
        print("no verdict: the machine is loaded (figures above, ratios on the median)")
        return 2
    missed = missed_targets(results, targets, min_rate)
    if missed:
        print("below target: " + "; ".join(missed))
        return 1
    print("every target met (on the median of the repeats)")
    return 0


def load_guard(args: Any) -> LoadGuard:
    """The load guard for a bench's ``--check`` on the load before the first run
    (:data:`LOAD_BEFORE_RUNS`; now, if nothing ran), overridden by ``--ignore-load``."""
    override = bool(getattr(args, "ignore_load", False))
    if LOAD_BEFORE_RUNS:
        return LoadGuard(LOAD_BEFORE_RUNS[0], override=override)
    return LoadGuard.read(override=override)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    """With ``--json PATH``: every figure of the run, for scripts and regressions."""
    if path:
        Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {path}", file=sys.stderr)


def percentile(values: Sequence[float], share: float) -> float:
    """The ``share`` (0..1) percentile of ``values``, nearest rank."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(share * len(ordered) + 0.5) - 1))
    return ordered[rank]


def add_common_arguments(parser: Any, *, events: int, repeat: int) -> None:
    """The flags every bench entry point shares."""
    parser.add_argument("--events", type=int, default=events, help="events per run")
    parser.add_argument("--repeat", type=int, default=repeat, help="timed runs per contender")
    parser.add_argument("--chunk", type=int, default=500, help="events per publish batch")
    parser.add_argument("--only", default="", help="run only contenders whose name contains this")
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the untimed N/10 warm-up run of each contender",
    )
    parser.add_argument("--json", default=None, metavar="PATH", help="also write figures as JSON")
    parser.add_argument(
        "--stages", action="store_true", help="print the per-stage cost table (us per event)"
    )
    parser.add_argument(
        "--latency",
        action="store_true",
        help="measure publish->handle latency of one awaited publish at a time (p50/p99)",
    )
    parser.add_argument(
        "--round-trips", type=int, default=500, help="sequential round trips for --latency"
    )
    parser.add_argument(
        "--ignore-load",
        action="store_true",
        help="judge --check targets even when the 1-minute load average is over 1.5 "
        "(development only: the output says the guard was overridden)",
    )
