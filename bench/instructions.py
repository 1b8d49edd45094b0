"""Instructions per event of ``bench_observability.py``'s cases, counted by valgrind.

::

    python bench/instructions.py --events 4000                 # publish_many, every case
    python bench/instructions.py --single --events 2000 --case off --case "tracing 1%"
    python bench/instructions.py --single --events 2000 --freeze-gc
    python bench/instructions.py --freeze-gc --case off --case idempotency

CPU time on a shared machine swings with what else runs (the same case gave 11 and
15 us per event minutes apart); the number of instructions the process executes
does not. Each case runs once in one process under ``valgrind --tool=callgrind``
(needs valgrind on PATH; ~50x slower than a plain run), after an untimed warm-up of
500 events: only the timed run is counted (it runs inside ``sys.call_tracing``, a
call nothing else makes, which callgrind is told to count in and to dump as it
returns).
Instructions are not time (cache misses and branch mispredictions are not in them),
but the Python-level work an observer adds shows in them one for one.

One thing moves them between cases that is not the case's own work: a full garbage
collection (every object of the process visited, ~30 million instructions here, ~15,000
per event of a 2,000-event run) falls inside one case's counted run and not another's,
depending on what ran before. ``--freeze-gc`` collects and freezes (``gc.freeze()``)
what exists before each counted run, so collections visit only what the run itself
made, as in a long-running service whose start-up objects have settled.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_observability as bench
import runner

from eventbus import EventBus, MemoryIdempotencyStore

HERE = Path(__file__).resolve()
DEFAULT_CASES = ["off", "metrics", "tracing, no SDK", "tracing 1%", "metrics + tracing 1%"]


def _idempotent(bus: EventBus) -> EventBus:
    """The default chain with idempotency over the memory store (issue 24's case)."""
    bus.idempotency = MemoryIdempotencyStore()
    return bus


def cases() -> dict[str, bench.Instrument]:
    """``bench_observability.py``'s cases, and ``idempotency`` (no observer)."""
    return {**bench.cases(), "idempotency": _idempotent}


def count(args: argparse.Namespace) -> None:
    """Under valgrind: each case's warm-up, then its timed run inside ``sys.call_tracing``."""
    made = cases()
    events = runner.make_events(args.events)
    for name in args.cases:
        make = made[name]
        asyncio.run(bench.one_run(events[:500], make, chunk=args.chunk, single=args.single))
        timed = bench.one_run(events, make, chunk=args.chunk, single=args.single)
        if args.freeze_gc:
            gc.collect()
            gc.freeze()
        sys.call_tracing(asyncio.run, (timed,))  # the counted call
        if args.freeze_gc:
            gc.unfreeze()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--single", action="store_true", help="one publish call per event")
    parser.add_argument("--case", dest="cases", action="append", help="a case (repeatable)")
    parser.add_argument(
        "--freeze-gc",
        action="store_true",
        help="collect and freeze the objects there are before each counted run",
    )
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.cases = args.cases or DEFAULT_CASES
    unknown = set(args.cases) - set(cases())
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}; cases: {', '.join(cases())}")
    if args.inside:
        count(args)
        return 0
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        command = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=sys_call_tracing",
            "--dump-after=sys_call_tracing",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(HERE),
            "--inside",
            *sys.argv[1:],
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        subprocess.run(command, check=True, env=env, capture_output=True)
        totals = []
        for dump in sorted(Path(folder).glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:])):
            for line in dump.read_text().splitlines():
                if line.startswith(("summary:", "totals:")):
                    totals.append(int(line.split()[1]))
                    break
    big = [total for total in totals if total > 0]  # the last dump, at exit, is empty
    if len(big) != len(args.cases):
        print(f"expected {len(args.cases)} counted runs, found {len(big)}", file=sys.stderr)
        return 1
    workload = "one publish per event" if args.single else f"publish_many of {args.chunk}"
    frozen = ", start-up objects frozen" if args.freeze_gc else ""
    print(f"\n{args.events} events on memory://, {workload}{frozen}; instructions per event")
    base = dict(zip(args.cases, big, strict=True)).get("off")
    for name, total in zip(args.cases, big, strict=True):
        more = f" {total / base - 1:+7.1%}" if base else ""
        print(f"{name:<24} {total / args.events:>10,.0f}{more}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
