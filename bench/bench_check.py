"""Issue 24's check on every broker in one go (``make bench-check``), one table.

::

    python bench/bench_check.py                         # every broker, 20000 events, 3 repeats
    python bench/bench_check.py --brokers kafka,redis --events 2000
    python bench/bench_check.py --ignore-load           # judge on a loaded machine (dev only)

Per broker, one at a time, the contenders of ``contenders/<broker>.py`` run
interleaved (``--repeat`` timed runs each after one warm-up, as every bench runs
them): eventbus, the fair raw contender (the raw client doing the same
CloudEvents wire work, ``fair.py``), the bare raw loop, and FastStream's defaults
where FastStream has the broker. Then lone publish->handle latency: eventbus on
every broker, against raw aiokafka's ``send_and_wait`` on Kafka (interleaved,
``--repeat`` times). Each broker's own best/median table is printed as it
finishes; at the end one table judges every target of issue 24 on the medians
(``verdict.py``): PASS, MISS, or NO VERDICT with the reason (fewer than 3
repeats, load average over 1.5, a run that failed).

It starts no broker itself beyond what the single benches do (Kafka and moto
through the test harness when no URL is set; the others must run:
``.ci/start-brokers``). Exit status: 1 if a target was missed, 2 if any target
got no verdict, else 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from types import ModuleType
from typing import Literal

import runner
from contenders import kafka, memory, rabbitmq, sqs
from contenders import nats as nats_bench
from contenders import redis as redis_bench
from latency import bus_latency, warmup_for
from runner import Result, percentile
from verdict import LoadGuard, Target, Verdict, exit_status, judge, render

BROKERS = ("memory", "kafka", "rabbitmq", "nats", "redis", "sqs")
FAIR_GOAL, RAW_GOAL, FASTSTREAM_GOAL = 0.8, 0.5, 5.0
MEMORY_GOAL, IDEMPOTENT_GOAL, STRUCTURED_GOAL, LATENCY_GOAL = 25.0, 15.0, 0.4, 2.0


def rates(result: Result | None) -> list[float]:
    """Events/s of every timed repeat (empty when the contender did not run)."""
    return [result.events / s for s in result.seconds] if result else []


def throughput_targets(
    broker: str, results: Sequence[Result], names: ModuleType, suffix: str = ""
) -> list[Target]:
    """eventbus against the fair contender, the bare raw loop and FastStream's defaults
    (where ``names``, a contenders module, has one), each name + ``suffix`` (a mode)."""
    by_name = {r.name: r for r in results}
    mine = rates(by_name.get(names.EVENTBUS + suffix))
    targets = []
    for label, attribute, goal in (
        ("vs fair raw", "FAIR", FAIR_GOAL),
        ("vs bare raw", "RAW", RAW_GOAL),
        ("vs FastStream defaults", "FASTSTREAM", FASTSTREAM_GOAL),
    ):
        name = getattr(names, attribute, None)
        if name is not None:
            name += suffix
            targets.append(
                Target(broker, f"{label} ({name})", mine, rates(by_name.get(name)), goal)
            )
    return targets


async def contest(
    args: argparse.Namespace, contenders: Sequence[runner.Contender], title: str
) -> list[Result]:
    """Run ``contenders`` interleaved and print their best/median table."""
    events = runner.make_events(args.events)
    results = await runner.run(contenders, events, repeat=args.repeat, warmup=not args.no_warmup)
    runner.report(title, results, references=[c.name for c in contenders if not c.ours])
    return results


def pick(contenders: Sequence[runner.Contender], *names: str) -> list[runner.Contender]:
    return [c for c in contenders if c.name in names]


async def lone_latency(
    broker: str,
    url: str,
    topic: Callable[[], Awaitable[str]],
    args: argparse.Namespace,
    start_from: Literal["earliest", "latest"] = "earliest",
) -> Target:
    """eventbus's lone publish->handle p99 on ``url``: measured, no target. A failure is
    reported in the table, keeping the broker's throughput figures."""
    label = "lone publish->handle p99"
    try:
        samples = await bus_latency(
            url, await topic(), args.round_trips, timeout=args.timeout, start_from=start_from
        )
    except Exception as exc:
        print(f"{broker}: latency failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return Target(broker, f"{label}: failed, {type(exc).__name__}", [], None, None)
    return Target(broker, label, [percentile(samples, 0.99) * 1e3], None, None, False, "ms")


async def check_memory(args: argparse.Namespace) -> list[Target]:
    chosen = pick(
        memory.contenders(chunk=args.chunk),
        memory.EVENTBUS,
        memory.EVENTBUS_IDEMPOTENT,
        memory.FASTSTREAM,
    )
    results = {r.name: r for r in await contest(args, chosen, "memory")}
    fs = rates(results.get(memory.FASTSTREAM))
    url = memory.memory_url()

    async def topic() -> str:
        return "bench-latency"

    try:
        latency = await lone_latency("memory", url, topic, args)
    finally:
        memory.forget(url)
    return [
        Target(
            "memory",
            f"default chain vs {memory.FASTSTREAM}",
            rates(results.get(memory.EVENTBUS)),
            fs,
            MEMORY_GOAL,
        ),
        Target(
            "memory",
            f"idempotency vs {memory.FASTSTREAM}",
            rates(results.get(memory.EVENTBUS_IDEMPOTENT)),
            fs,
            IDEMPOTENT_GOAL,
        ),
        latency,
    ]


async def check_kafka(args: argparse.Namespace) -> list[Target]:
    url = kafka.resolve_url(args.kafka_url, "apache")
    broker = kafka.Broker(url, 4, args.timeout, await kafka.producer_is_idempotent(url))
    every = kafka.contenders(broker, chunk=args.chunk, concurrency=16)
    quiet = kafka.FASTSTREAM_QUIET  # FastStream's defaults are the reference
    results = await contest(args, [c for c in every if c.name != quiet], f"Kafka ({url})")
    targets = throughput_targets("kafka", results, kafka)
    by_name = {r.name: r for r in results}
    targets.append(
        Target(
            "kafka",
            f"structured vs bare raw ({kafka.RAW})",
            rates(by_name.get(kafka.EVENTBUS_STRUCTURED)),
            rates(by_name.get(kafka.RAW)),
            STRUCTURED_GOAL,
        )
    )
    ours: list[float] = []
    raw: list[float] = []
    for _ in range(args.repeat):  # interleaved, as the throughput runs are
        samples = await bus_latency(
            url,
            await broker.new_topic("latency"),
            args.round_trips,
            concurrency=16,
            timeout=args.timeout,
        )
        ours.append(percentile(samples, 0.99) * 1e3)
        samples = await kafka.raw_latency(broker, args.round_trips, warmup_for(args.round_trips))
        raw.append(percentile(samples, 0.99) * 1e3)
    targets.append(
        Target(
            "kafka",
            "lone publish->handle p99 vs raw send_and_wait",
            ours,
            raw,
            LATENCY_GOAL,
            higher=False,
            unit="ms",
        )
    )
    return targets


async def check_rabbitmq(args: argparse.Namespace) -> list[Target]:
    url = os.environ.get("EVENTBUS_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
    broker = rabbitmq.Broker(url, args.timeout, 256)
    every = rabbitmq.contenders(broker, chunk=args.chunk, concurrency=16)
    chosen = [c for c in every if c.name != rabbitmq.FASTSTREAM_QUIET]
    results = await contest(args, chosen, "RabbitMQ")
    targets = throughput_targets("rabbitmq", results, rabbitmq)

    async def topic() -> str:
        return rabbitmq.new_topic("latency")

    return [*targets, await lone_latency("rabbitmq", url, topic, args)]


async def check_nats(args: argparse.Namespace) -> list[Target]:
    address = nats_bench.resolve_address(None)
    targets: list[Target] = []
    for mode in ("jetstream", "core"):
        server = nats_bench.Server(address, jetstream=mode == "jetstream", timeout=args.timeout)
        results = await contest(
            args, nats_bench.contenders(server, chunk=args.chunk, concurrency=16), f"NATS {mode}"
        )
        targets += throughput_targets(f"nats {mode}", results, nats_bench)

        async def topic() -> str:
            return nats_bench.fresh("latency")

        targets.append(await lone_latency(f"nats {mode}", server.eventbus_url, topic, args))
    return targets


async def check_redis(args: argparse.Namespace) -> list[Target]:
    broker = redis_bench.Broker(args.redis_url, timeout=args.timeout)
    targets: list[Target] = []
    for mode in ("streams", "pubsub"):
        results = await contest(
            args,
            redis_bench.contenders(broker, mode, chunk=args.chunk, concurrency=8),
            f"Redis {mode}",
        )
        targets += throughput_targets(f"redis {mode}", results, redis_bench, f" {mode}")

        async def topic() -> str:
            return broker.new_topic("latency")

        targets.append(await lone_latency(f"redis {mode}", broker.bus_url(mode), topic, args))
    return targets


async def check_sqs(args: argparse.Namespace) -> list[Target]:
    broker = sqs.resolve(None, 4, args.timeout)
    events = args.events
    args.events = min(events, args.sqs_events)  # moto is ~100x slower than the others
    try:
        results = await contest(
            args,
            sqs.contenders(broker, chunk=args.chunk, concurrency=16),
            f"SQS/SNS ({args.events} events)",
        )
    finally:
        args.events = events
    targets = throughput_targets("sqs", results, sqs)

    async def topic() -> str:
        return f"bench-latency-{uuid.uuid4().hex[:12]}"

    return [*targets, await lone_latency("sqs", broker.bus_url, topic, args, "latest")]


CHECKS: dict[str, Callable[[argparse.Namespace], Awaitable[list[Target]]]] = {
    "memory": check_memory,
    "kafka": check_kafka,
    "rabbitmq": check_rabbitmq,
    "nats": check_nats,
    "redis": check_redis,
    "sqs": check_sqs,
}


async def main_async(args: argparse.Namespace) -> int:
    # Before anything runs: read later, the load would count this bench's own work.
    guard = LoadGuard.read(override=args.ignore_load)
    print(guard.describe(), file=sys.stderr)
    targets: list[Target] = []
    for name in args.brokers:
        print(f"\n=== {name} ===", file=sys.stderr)
        try:
            targets += await CHECKS[name](args)
        except Exception as exc:  # one broker down must not hide the others' figures
            print(f"{name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            targets.append(
                Target(name, f"run failed: {type(exc).__name__}: {exc}"[:90], [], [], None)
            )
    verdicts: list[Verdict] = [judge(t, guard) for t in targets]
    print(
        f"\nissue 24 targets: {args.events} events (SQS {min(args.events, args.sqs_events)}), "
        f"median of {args.repeat} interleaved repeats (best beside it)"
    )
    print(render(verdicts, guard))
    after = os.getloadavg()[0]
    print(f"(load average after the runs: {after:.2f}, this bench's own work included)")
    runner.write_json(
        args.json,
        {
            "load_average_before": guard.load,
            "load_average_after": after,
            "ignore_load": args.ignore_load,
            "repeat": args.repeat,
            "events": args.events,
            "targets": [v.as_dict() for v in verdicts],
        },
    )
    return exit_status(verdicts)


def parse_brokers(text: str) -> list[str]:
    chosen = [b.strip() for b in text.split(",") if b.strip()]
    unknown = [b for b in chosen if b not in BROKERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown broker(s) {unknown}; choose from {', '.join(BROKERS)}"
        )
    return chosen


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=20_000, help="events per run")
    parser.add_argument("--sqs-events", type=int, default=1_000, help="at most, on SQS (moto)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per contender (>= 3)")
    parser.add_argument("--chunk", type=int, default=500, help="events per publish batch")
    parser.add_argument("--round-trips", type=int, default=500, help="lone round trips")
    parser.add_argument("--no-warmup", action="store_true", help="skip each warm-up run")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per wait")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the verdicts")
    parser.add_argument(
        "--brokers",
        type=parse_brokers,
        default=list(BROKERS),
        help=f"comma-separated, default all: {','.join(BROKERS)}",
    )
    parser.add_argument(
        "--kafka-url",
        default=None,
        help="default: $EVENTBUS_BENCH_KAFKA_URL, else the harness's private Kafka",
    )
    parser.add_argument(
        "--ignore-load",
        action="store_true",
        help="judge even when the load average is over 1.5 (development only; "
        "the table says the guard was overridden)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
