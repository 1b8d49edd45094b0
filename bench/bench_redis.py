"""End-to-end events/s on a real Redis, Streams and Pub/Sub: eventbus against a
hand-written pipelined redis-py loop and against FastStream's RedisBroker.

::

    python bench/bench_redis.py                              # redis://127.0.0.1:6379/0
    python bench/bench_redis.py --url redis://host:6379/0 --events 20000 --repeat 3
    python bench/bench_redis.py --mode streams               # one mode only

Every contender does the same work in the same process on the same server, on
its own fresh stream or channel; see ``contenders/redis.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import platform
import sys
from collections.abc import Sequence
from typing import Any

import runner
from contenders import redis as contenders_redis


async def main_async(args: argparse.Namespace) -> int:
    broker = contenders_redis.Broker(args.url, timeout=args.timeout)
    events = runner.make_events(args.events)
    payload: dict[str, Any] = {}
    status = 0
    modes: list[contenders_redis.Mode] = (
        ["streams", "pubsub"] if args.mode == "both" else [args.mode]
    )
    for mode in modes:
        selected = runner.select(
            contenders_redis.contenders(
                broker, mode, chunk=args.chunk, concurrency=args.concurrency
            ),
            args.only,
        )
        results = await runner.run(selected, events, repeat=args.repeat, warmup=args.warmup)
        targets = [
            (f"{contenders_redis.RAW} {mode}", args.target_raw),
            (f"{contenders_redis.FASTSTREAM} {mode}", args.target_faststream),
        ]
        versions = ", ".join(
            f"{d} {importlib.metadata.version(d)}" for d in ("redis", "faststream")
        )
        runner.report(
            f"Redis {mode}: {args.events} events, best of {args.repeat}; eventbus "
            f"concurrency {args.concurrency}, chunk {args.chunk}; python "
            f"{platform.python_version()}, {versions}",
            results,
            targets=targets,
            references=[f"{contenders_redis.FAIR} {mode}", f"{contenders_redis.RAW} {mode}"],
        )
        payload[mode] = [r.as_dict() for r in results]
        if args.check:
            status |= runner.check(results, targets, guard=runner.load_guard(args))
    runner.write_json(args.json, payload)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0", help="the Redis server")
    parser.add_argument("--mode", choices=["both", "streams", "pubsub"], default="both")
    runner.add_common_arguments(parser, events=5_000, repeat=3)
    parser.add_argument("--concurrency", type=int, default=8, help="eventbus workers")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per wait")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--target-raw",
        type=float,
        default=0.8,
        help="eventbus must reach this share of the raw loop",
    )
    parser.add_argument(
        "--target-faststream",
        type=float,
        default=2.0,
        help="eventbus must reach this multiple of FastStream",
    )
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
