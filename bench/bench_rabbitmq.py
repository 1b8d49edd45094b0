"""End-to-end events/s on RabbitMQ: eventbus against a hand-written pipelined aio-pika
loop and against FastStream's RabbitBroker, same run, same broker.

::

    python bench/bench_rabbitmq.py                         # amqp://guest:guest@127.0.0.1:5672/
    python bench/bench_rabbitmq.py --url amqp://... --events 20000 --repeat 3

The contenders are in ``contenders/rabbitmq.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

import runner
from contenders import rabbitmq


async def main_async(args: argparse.Namespace) -> int:
    broker = rabbitmq.Broker(args.url, args.timeout, args.prefetch)
    events = runner.make_events(args.events)
    selected = runner.select(
        rabbitmq.contenders(broker, chunk=args.chunk, concurrency=args.concurrency), args.only
    )
    results = await runner.run(selected, events, repeat=args.repeat, warmup=args.warmup)
    versions = ", ".join(
        f"{dist} {importlib.metadata.version(dist)}" for dist in ("aio-pika", "faststream")
    )
    targets = [(rabbitmq.RAW, args.target_raw)]
    runner.report(
        f"{args.events} events, best of {args.repeat}; eventbus concurrency "
        f"{args.concurrency}, chunk {args.chunk}; raw prefetch {args.prefetch}; "
        f"python {platform.python_version()}, {versions}",
        results,
        targets=targets,
        references=[rabbitmq.FAIR, rabbitmq.RAW, rabbitmq.FASTSTREAM, rabbitmq.FASTSTREAM_QUIET],
    )
    payload: dict[str, Any] = {
        "bench": "rabbitmq",
        "events": args.events,
        "throughput": [r.as_dict() for r in results],
    }
    runner.write_json(args.json, payload)
    return runner.check(results, targets, guard=runner.load_guard(args)) if args.check else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--url",
        default=os.environ.get("EVENTBUS_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    )
    runner.add_common_arguments(parser, events=5_000, repeat=3)
    parser.add_argument(
        "--concurrency", type=int, default=16, help="eventbus subscription concurrency"
    )
    parser.add_argument("--prefetch", type=int, default=256, help="raw loop's basic.qos")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per wait")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--target-raw",
        type=float,
        default=0.8,
        help="eventbus / raw aio-pika at least this (issue 14: 0.8)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
