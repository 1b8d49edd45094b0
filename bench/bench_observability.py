"""What tracing and metrics cost on ``memory://``: events/s and CPU per event with them
off and on, and the memory they hold.

::

    python bench/bench_observability.py --events 20000 --repeat 5
    python bench/bench_observability.py --single          # one publish call per event
    python bench/bench_observability.py --memory          # tracemalloc peak / retained
    python bench/bench_observability.py --against /tmp/main --repeat 5   # "off" vs a checkout
    python bench/bench_observability.py --url redis+streams://localhost:6379/0 --events 5000

Each case is the default chain (correlation, dead-letter, retry) with one handler
counting ``Tick`` events, as in ``bench_memory.py``; what differs is what the bus is
instrumented with:

- ``off``: nothing (``EventBus(url)``);
- ``metrics``: ``Metrics(registry=<fresh prometheus registry>).instrument(bus)``;
- ``tracing, no SDK``: ``Tracing()`` with OpenTelemetry's global provider never set
  (nothing configured to record): tracing installed, waiting for a provider;
- ``tracing 1%``: the SDK with ``ParentBased(TraceIdRatioBased(0.01))`` and a
  ``BatchSpanProcessor`` to an exporter that drops the spans (a production set-up
  without the network);
- ``tracing 100%``: the same, every trace sampled;
- ``metrics + tracing 1%`` and ``metrics + tracing 100%``: both.

Runs are interleaved (each repeat runs every case once) after one warm-up each; the
table gives the best and the median events/s, CPU us per event (this process,
including the span processor's thread) and the median's overhead against ``off``.
``--against DIR`` runs the ``off`` case in fresh processes alternately from this
checkout and from the one at DIR (e.g. ``git worktree add /tmp/main main``), to
show what the hooks cost when nothing is instrumented. ``--url`` runs the cases on a
real broker instead (a fresh topic and group per run; ``concurrency=16``, as the
other real-broker benches).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import runner
from contenders.memory import forget, memory_url

from eventbus import EventBus

ROOT = Path(__file__).resolve().parents[1]
Instrument = Callable[[EventBus], EventBus]


def cases() -> dict[str, Instrument]:
    """Every case by name: how it instruments a bus (imports only when asked)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from prometheus_client import CollectorRegistry

    from eventbus.metrics import Metrics
    from eventbus.tracing import Tracing

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    def provider(ratio: float) -> Any:
        made = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
        made.add_span_processor(BatchSpanProcessor(Drop(), max_queue_size=1 << 16))
        return made

    sampled, one_percent = provider(1.0), provider(0.01)

    def metrics(bus: EventBus) -> EventBus:
        return Metrics(registry=CollectorRegistry()).instrument(bus)

    return {
        "off": lambda bus: bus,
        "metrics": metrics,
        "tracing, no SDK": Tracing().instrument,  # the global provider, never set here
        "tracing 1%": Tracing(one_percent).instrument,
        "tracing 100%": Tracing(sampled).instrument,
        "metrics + tracing 1%": lambda bus: metrics(Tracing(one_percent).instrument(bus)),
        "metrics + tracing 100%": lambda bus: metrics(Tracing(sampled).instrument(bus)),
    }


BROKER_URL: str | None = None  # --url: a real broker instead of a private memory://


async def one_run(
    events: Sequence[runner.Tick], instrument: Instrument, *, chunk: int, single: bool
) -> runner.Timing:
    url = BROKER_URL or memory_url()
    bus = instrument(EventBus(url, source="bench"))
    counter = runner.Counter(len(events))
    topic = f"bench-obs-{uuid.uuid4().hex[:12]}" if BROKER_URL else runner.Tick.default_topic()

    @bus.subscribe(
        topic, group=f"bench-{uuid.uuid4().hex[:8]}", concurrency=16 if BROKER_URL else 1
    )
    async def handle(event: runner.Tick) -> None:
        counter.see(event)

    try:
        async with bus:
            counter.start()
            for part in runner.chunks(events, chunk):
                if single:
                    await asyncio.gather(*(bus.publish(event, topic=topic) for event in part))
                else:
                    await bus.publish_many(part, topic=topic)
            counter.mark_published()
            await counter.wait_done("bench", 120.0)
    finally:
        if not BROKER_URL:
            forget(url)
    return counter.timing()


async def throughput(args: argparse.Namespace) -> dict[str, Any]:
    chosen = {name: make for name, make in cases().items() if not args.only or args.only in name}
    contenders = [
        runner.Contender(name, _bound(make, args), ours=True) for name, make in chosen.items()
    ]
    events = runner.make_events(args.events)
    results = await runner.run(contenders, events, repeat=args.repeat, warmup=args.warmup)
    base = next((r for r in results if r.name == "off"), None)
    workload = "one publish per event" if args.single else f"publish_many of {args.chunk}"
    print(
        f"\n{args.events} events on {BROKER_URL or 'memory://'}, {workload}, "
        f"{args.repeat} interleaved repeats; "
        f"load average {os.getloadavg()[0]:.2f} at the end"
    )
    print(
        f"{'case':<24} {'best/s':>9} {'median/s':>9} {'CPU us/event':>13} "
        f"{'overhead (median)':>18} {'CPU overhead':>13}"
    )
    for result in results:
        cpu = statistics.median(result.cpu_seconds) / result.events * 1e6
        if base is not None:
            slower = result.events / result.median_rate / (base.events / base.median_rate) - 1
            base_cpu = statistics.median(base.cpu_seconds) / base.events * 1e6
            more = f"{slower:>+17.1%} {cpu / base_cpu - 1:>+13.1%}"
        else:
            more = ""
        print(
            f"{result.name:<24} {result.rate:>9,.0f} {result.median_rate:>9,.0f} "
            f"{cpu:>13.2f} {more}"
        )
    return {"throughput": [r.as_dict() for r in results]}


def _bound(make: Instrument, args: argparse.Namespace) -> runner.Run:
    async def run(events: Sequence[runner.Tick]) -> runner.Timing:
        return await one_run(events, make, chunk=args.chunk, single=args.single)

    return run


async def memory(args: argparse.Namespace) -> dict[str, Any]:
    """Per case: tracemalloc's peak during a run and what is still held after it."""
    events = runner.make_events(args.events)
    rows: dict[str, Any] = {}
    print(f"\n{args.events} events per case; KiB traced by tracemalloc")
    print(f"{'case':<24} {'peak KiB':>10} {'held after KiB':>15}")
    for name, make in cases().items():
        if args.only and args.only not in name:
            continue
        await one_run(events[: len(events) // 10], make, chunk=args.chunk, single=args.single)
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        await one_run(events, make, chunk=args.chunk, single=args.single)
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows[name] = {"peak_kib": (peak - before) / 1024, "held_kib": (held - before) / 1024}
        print(f"{name:<24} {rows[name]['peak_kib']:>10,.0f} {rows[name]['held_kib']:>15,.0f}")
    return {"memory": rows}


def against(args: argparse.Namespace) -> dict[str, Any]:
    """The ``off`` case in fresh processes, alternately from this checkout and another."""
    sides = {"this checkout": ROOT, "other checkout": Path(args.against).resolve()}
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for index in range(args.repeat):
        for name, root in sides.items():
            env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{ROOT / 'bench'}"}
            done = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--one-off",
                    "--events",
                    str(args.events),
                    "--chunk",
                    str(args.chunk),
                ]
                + (["--single"] if args.single else []),
                env=env,
                capture_output=True,
                text=True,
                check=True,
                cwd=root,
            )
            seconds, cpu = json.loads(done.stdout.splitlines()[-1])
            if index == 0:
                print(f"{name}: {done.stderr.strip().splitlines()[0]}", file=sys.stderr)
            figures[name].append((seconds, cpu))
            print(
                f"run {index + 1}/{args.repeat}: {name}: {args.events / seconds:,.0f}/s, "
                f"{cpu / args.events * 1e6:.2f} CPU us/event",
                file=sys.stderr,
            )
    print(
        f"\n'off' in fresh processes, {args.events} events, {args.repeat} alternated runs "
        f"each; load average {os.getloadavg()[0]:.2f} at the end"
    )
    rows = {}
    for name, runs in figures.items():
        rate = args.events / statistics.median(s for s, _ in runs)
        cpu = statistics.median(c for _, c in runs) / args.events * 1e6
        rows[name] = {"median_rate": rate, "cpu_us_per_event": cpu, "runs": runs}
        print(f"{name:<16} median {rate:>9,.0f}/s   CPU {cpu:.2f} us/event")
    this, other = rows["this checkout"], rows["other checkout"]
    print(
        f"this / other: {this['median_rate'] / other['median_rate']:.3f}x events/s, "
        f"{this['cpu_us_per_event'] / other['cpu_us_per_event']:.3f}x CPU per event"
    )
    return {"against": rows}


async def one_off(args: argparse.Namespace) -> None:
    """For ``--against``: warm up, then one timed ``off`` run; prints [seconds, cpu]."""
    import eventbus

    print(f"eventbus from {Path(eventbus.__file__).parent}", file=sys.stderr)
    events = runner.make_events(args.events)
    await one_run(
        events[: len(events) // 10], lambda bus: bus, chunk=args.chunk, single=args.single
    )
    gc.collect()
    timing = await one_run(events, lambda bus: bus, chunk=args.chunk, single=args.single)
    print(json.dumps([timing.total, timing.cpu]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    runner.add_common_arguments(parser, events=20_000, repeat=5)
    parser.add_argument("--single", action="store_true", help="one publish call per event")
    parser.add_argument("--memory", action="store_true", help="tracemalloc peak and held")
    parser.add_argument("--against", metavar="DIR", help="'off' here vs the checkout at DIR")
    parser.add_argument("--url", help="a real broker's URL instead of memory://")
    parser.add_argument("--one-off", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global BROKER_URL
    BROKER_URL = args.url
    if args.one_off:
        asyncio.run(one_off(args))
        return 0
    started = time.perf_counter()
    if args.against:
        payload = against(args)
    elif args.memory:
        payload = asyncio.run(memory(args))
    else:
        payload = asyncio.run(throughput(args))
    runner.write_json(args.json, payload)
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
