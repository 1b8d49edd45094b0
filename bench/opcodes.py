"""Python opcodes per event, by function, of ``instructions.py``'s cases on memory.

::

    python bench/opcodes.py                              # the default chain, publish_many
    python bench/opcodes.py --case idempotency --top 20
    python bench/opcodes.py --case off --against "metrics + tracing 1%" --single

Where the interpreter's work goes, per function: the opcodes executed in it per
event (``sys.settrace`` with opcode events, over a run after an untimed warm-up of
the same size) and its calls per event. Deterministic (another process's load does
not change it) and cheap (~1 s per 1,000 events), but opcodes are not time: a C
call (pydantic, ``dict``, the codec's ``str`` work) is one opcode whatever it costs.
``--against`` prints the difference of a second case per function instead.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
from types import FrameType
from typing import Any

import bench_observability as bench
import instructions
import runner

Key = tuple[str, str]


def count(case: str, events: int, chunk: int, single: bool) -> tuple[Any, Any]:
    """(opcodes, calls) per (file, function) over one counted run of ``case``."""
    make = instructions.cases()[case]
    ticks = runner.make_events(events)
    asyncio.run(bench.one_run(ticks, make, chunk=chunk, single=single))  # warm-up
    opcodes: collections.Counter[Key] = collections.Counter()
    calls: collections.Counter[Key] = collections.Counter()

    def tracer(frame: FrameType, event: str, arg: object) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        code = frame.f_code
        key = (code.co_filename.rsplit("/", 1)[-1], code.co_name)
        if event == "opcode":
            opcodes[key] += 1
        elif event == "call":
            calls[key] += 1
        return tracer

    timed = bench.one_run(ticks, make, chunk=chunk, single=single)
    previous = sys.gettrace()  # a coverage run's tracer, say: put back after
    sys.settrace(tracer)
    try:
        asyncio.run(timed)
    finally:
        sys.settrace(previous)
    return opcodes, calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--case", default="off", help="a case of instructions.py")
    parser.add_argument("--against", help="print this case's difference to --case instead")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--single", action="store_true", help="one publish call per event")
    parser.add_argument("--top", type=int, default=30, help="functions shown")
    args = parser.parse_args()
    known = instructions.cases()
    for name in filter(None, (args.case, args.against)):
        if name not in known:
            parser.error(f"unknown case {name!r}; cases: {', '.join(known)}")
    n = args.events
    workload = "one publish per event" if args.single else f"publish_many of {args.chunk}"
    opcodes, calls = count(args.case, n, args.chunk, args.single)
    if args.against:
        other, _ = count(args.against, n, args.chunk, args.single)
        print(
            f"{n} events on memory://, {workload}: {args.against!r} "
            f"{sum(other.values()) / n:,.0f} opcodes per event, {args.case!r} "
            f"{sum(opcodes.values()) / n:,.0f}; per function, the difference:"
        )
        diff = {k: (other[k] - opcodes[k]) / n for k in set(other) | set(opcodes)}
        for key, more in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[: args.top]:
            print(f"  {more:+8.1f}  {key[0]}:{key[1]}")
        return 0
    print(
        f"{n} events on memory://, {workload}, case {args.case!r}: "
        f"{sum(opcodes.values()) / n:,.0f} opcodes per event"
    )
    print(f"  {'opcodes':>8}  {'calls':>6}  function")
    for key, total in opcodes.most_common(args.top):
        print(f"  {total / n:8.1f}  {calls[key] / n:6.2f}  {key[0]}:{key[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
