"""End-to-end events/s on SQS/SNS: eventbus against a raw aioboto3 loop doing the
same batched work (FastStream has no SQS broker).

::

    python bench/bench_sqs.py                        # starts a private moto_server
    python bench/bench_sqs.py --url "sqs://?region=eu-west-1" --events 2000

Every contender publishes N events to an SNS topic in batches of 10, consumes
them from one SQS queue subscribed with raw delivery on the same number of
long-poll receivers, validates each into the same pydantic model and deletes it.
The clock runs from the first publish until the N-th event was handled.
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
from contenders import sqs


async def main_async(args: argparse.Namespace) -> int:
    broker = sqs.resolve(args.url, args.receivers, args.timeout)
    events = runner.make_events(args.events)
    selected = runner.select(
        sqs.contenders(broker, chunk=args.chunk, concurrency=args.concurrency), args.only
    )
    results = await runner.run(selected, events, repeat=args.repeat, warmup=args.warmup)
    versions = ", ".join(f"{d} {importlib.metadata.version(d)}" for d in ("aioboto3", "moto"))
    targets = [(sqs.RAW, args.target_raw)]
    runner.report(
        f"{args.events} events, {args.receivers} receivers, best of {args.repeat}; "
        f"eventbus concurrency {args.concurrency}, chunk {args.chunk}; "
        f"python {platform.python_version()}, {versions}",
        results,
        targets=targets,
        references=[sqs.FAIR, sqs.RAW],
    )
    payload: dict[str, Any] = {
        "bench": "sqs",
        "events": args.events,
        "throughput": [r.as_dict() for r in results],
    }
    runner.write_json(args.json, payload)
    return runner.check(results, targets, guard=runner.load_guard(args)) if args.check else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--url",
        default=None,
        help="sqs://host:port?region=... (default: $EVENTBUS_BENCH_SQS_URL, "
        "else a private moto_server)",
    )
    runner.add_common_arguments(parser, events=1_000, repeat=3)
    parser.add_argument("--receivers", type=int, default=4, help="long-poll loops per consumer")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="eventbus subscription concurrency"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per wait")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--target-raw",
        type=float,
        default=0.8,
        help="eventbus / raw aioboto3 at least this (issue 11: 0.8)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
