"""End-to-end events/s on a real NATS server, JetStream and core NATS: eventbus
against a hand-written pipelined nats-py loop and against FastStream's NatsBroker.

::

    python bench/bench_nats.py                          # the NATS the test harness finds
    python bench/bench_nats.py --url nats://127.0.0.1:4222 --events 20000 --repeat 3
    python bench/bench_nats.py --mode jetstream         # or core; both by default

Every contender does the same work in the same process, on the same server, on
its own fresh subject: publish N confirmed events (JetStream: PubAcks; core:
written and flushed), consume all N in a group (JetStream: acked), validate each
into the same pydantic model. The contenders are in ``contenders/nats.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import platform
import sys
from collections.abc import Sequence
from typing import Any

import runner
from contenders import nats as nats_bench


async def main_async(args: argparse.Namespace) -> int:
    address = nats_bench.resolve_address(args.url)
    modes = ("jetstream", "core") if args.mode == "both" else (args.mode,)
    payload: dict[str, Any] = {
        "bench": "nats",
        "server": address,
        "events": args.events,
        "repeat": args.repeat,
        "concurrency": args.concurrency,
        "chunk": args.chunk,
    }
    versions = ", ".join(
        f"{dist} {importlib.metadata.version(dist)}" for dist in ("nats-py", "faststream")
    )
    targets = [(nats_bench.RAW, args.target_raw), (nats_bench.FASTSTREAM, args.target_faststream)]
    status = 0
    for mode in modes:
        server = nats_bench.Server(address, jetstream=mode == "jetstream", timeout=args.timeout)
        selected = runner.select(
            nats_bench.contenders(server, chunk=args.chunk, concurrency=args.concurrency), args.only
        )
        results = await runner.run(
            selected, runner.make_events(args.events), repeat=args.repeat, warmup=args.warmup
        )
        runner.report(
            f"NATS {mode}: {args.events} events, best of {args.repeat}; eventbus concurrency "
            f"{args.concurrency}, chunk {args.chunk}; python {platform.python_version()}, "
            f"{versions}",
            results,
            targets=targets,
            references=[nats_bench.FAIR, nats_bench.RAW, nats_bench.FASTSTREAM],
        )
        payload[mode] = [r.as_dict() for r in results]
        if args.check:
            status |= runner.check(results, targets, guard=runner.load_guard(args))
    runner.write_json(args.json, payload)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--url",
        default=None,
        help="nats://host:port (default: $EVENTBUS_BENCH_NATS_URL, else the harness's NATS)",
    )
    parser.add_argument("--mode", choices=("both", "jetstream", "core"), default="both")
    runner.add_common_arguments(parser, events=5_000, repeat=3)
    parser.add_argument(
        "--concurrency", type=int, default=16, help="eventbus subscription concurrency"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per wait")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--target-raw",
        type=float,
        default=0.8,
        help="eventbus / raw nats-py at least this (issue 9: 0.8)",
    )
    parser.add_argument(
        "--target-faststream",
        type=float,
        default=2.0,
        help="eventbus / FastStream defaults at least this (issue 9: 2)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
