"""End-to-end events/s on a real Kafka-protocol broker: eventbus against a
hand-written pipelined aiokafka loop and against FastStream's KafkaBroker.

::

    python bench/bench_kafka.py                      # starts a private Apache Kafka
    python bench/bench_kafka.py --broker tansu       # ... or a private Tansu
    python bench/bench_kafka.py --url kafka://127.0.0.1:9092 --events 20000 --repeat 3
    python bench/bench_kafka.py --stages             # per-stage cost table, memory and Kafka
    python bench/bench_kafka.py --latency            # p50/p99 lone publish->handle vs raw

Every contender does the same work in the same process, on the same broker, on
its own fresh topic (created up front with the admin client, same partition
count for all): publish N broker-confirmed events, consume all N in a consumer
group that commits, and validate each into the same pydantic model. The clock
runs from the first publish until the handler has seen the N-th event; joining
the group happens before it starts (see ``README.md`` for each configuration).
The contenders are in ``contenders/kafka.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import platform
import sys
import time
from collections.abc import Sequence
from typing import Any

import runner
import stages
from contenders import kafka, memory
from latency import Latency, bus_latency, print_latencies, warmup_for

from eventbus import EventBus


async def throughput(
    args: argparse.Namespace, broker: kafka.Broker, payload: dict[str, Any]
) -> int:
    events = runner.make_events(args.events)
    selected = runner.select(
        kafka.contenders(broker, chunk=args.chunk, concurrency=args.concurrency), args.only
    )
    results = await runner.run(selected, events, repeat=args.repeat, warmup=args.warmup)
    versions = ", ".join(
        f"{dist} {importlib.metadata.version(dist)}" for dist in ("aiokafka", "faststream")
    )
    targets = [(kafka.RAW, args.target_raw), (kafka.FASTSTREAM, args.target_faststream)]
    runner.report(
        f"{args.events} events, {broker.partitions} partitions, best of {args.repeat}; "
        f"eventbus concurrency {args.concurrency}, chunk {args.chunk}; "
        f"python {platform.python_version()}, {versions}",
        results,
        targets=targets,
        references=[kafka.FAIR, kafka.RAW, kafka.FASTSTREAM, kafka.FASTSTREAM_QUIET],
    )
    payload["throughput"] = [r.as_dict() for r in results]
    return runner.check(results, targets, guard=runner.load_guard(args)) if args.check else 0


async def stage_table(
    args: argparse.Namespace, broker: kafka.Broker, payload: dict[str, Any]
) -> None:
    """The same stages on memory and on Kafka, side by side."""
    events = runner.make_events(args.events)
    memory_urls: list[str] = []

    def memory_url() -> str:
        memory_urls.append(memory.memory_url())
        return memory_urls[-1]

    async def memory_topic() -> str:
        return f"bench-stages-{time.perf_counter_ns()}"

    async def memory_e2e(ev: Sequence[runner.Tick], factory: Any) -> runner.Timing:
        return await memory.eventbus_case(
            ev, chunk=args.chunk, idempotency=False, bus_factory=factory
        )

    async def kafka_topic() -> str:
        return await broker.new_topic("stages")

    async def kafka_e2e(ev: Sequence[runner.Tick], factory: Any) -> runner.Timing:
        return await kafka.eventbus_case(
            broker, ev, chunk=args.chunk, concurrency=args.concurrency, bus_factory=factory
        )

    try:
        on_memory = await stages.measure(
            memory_url,
            memory_topic,
            events,
            memory_e2e,
            wire=memory.wire_for(memory_url()),
            chunk=args.chunk,
            repeat=args.repeat,
            subscribe_first=True,
        )
    finally:
        for used in memory_urls:
            memory.forget(used)
    on_kafka = await stages.measure(
        lambda: broker.url,
        kafka_topic,
        events,
        kafka_e2e,
        wire=kafka.KafkaWire(),
        chunk=args.chunk,
        repeat=args.repeat,
        subscribe_first=False,
        timeout=broker.timeout,
    )
    stages.print_table(
        f"per-stage cost, CPU us per event in this process (N={args.events}, best of "
        f"{args.repeat}; Kafka: {broker.partitions} partitions, eventbus concurrency "
        f"{args.concurrency})",
        args.events,
        {"memory": on_memory, "kafka": on_kafka},
    )
    payload["stages"] = {
        "memory": stages.as_dict(args.events, on_memory),
        "kafka": stages.as_dict(args.events, on_kafka),
    }
    # What the CloudEvents headers cost aiokafka itself (issue 7 asks to measure it).
    wire = kafka.KafkaWire()
    bus = EventBus(memory.memory_url(), source="bench")
    records = [wire.encode(bus.envelope_for(event)) for event in events]
    memory.forget(bus.adapter.url)
    costs = {
        headers: min(
            [await kafka.raw_send_cpu(broker, records, headers=headers) for _ in range(args.repeat)]
        )
        / len(records)
        * 1e6
        for headers in (True, False)
    }
    count = len(records[0].headers)
    print(
        f"\nraw aiokafka producer, same records, CPU us per event: with the {count} "
        f"CloudEvents headers {costs[True]:.1f}, without {costs[False]:.1f} "
        f"(headers: {costs[True] - costs[False]:+.1f} us, "
        f"{(costs[True] - costs[False]) / count:.2f} us per header)"
    )
    payload["raw_send_us"] = {
        "with_headers": costs[True],
        "without_headers": costs[False],
        "headers_per_record": count,
    }


async def latency(args: argparse.Namespace, broker: kafka.Broker, payload: dict[str, Any]) -> None:
    trips = args.round_trips
    rows = []
    url = memory.memory_url()
    try:
        rows.append(
            Latency(
                "eventbus memory (default chain)", await bus_latency(url, "bench-latency", trips)
            )
        )
    finally:
        memory.forget(url)
    print("latency: eventbus on Kafka", file=sys.stderr)
    rows.append(
        Latency(
            "eventbus kafka (defaults)",
            await bus_latency(
                broker.url,
                await broker.new_topic("latency"),
                trips,
                concurrency=args.concurrency,
                timeout=broker.timeout,
            ),
        )
    )
    for linger in (0, 5):
        print(f"latency: raw aiokafka, linger_ms={linger}", file=sys.stderr)
        rows.append(
            Latency(
                f"raw aiokafka send_and_wait (linger_ms={linger})",
                await kafka.raw_latency(broker, trips, warmup_for(trips), linger_ms=linger),
            )
        )
    print_latencies(
        f"publish -> handle latency, one awaited publish at a time ({trips} round trips "
        f"after {warmup_for(trips)} warm-up; Kafka: {broker.partitions} partitions)",
        rows,
        reference="raw aiokafka send_and_wait (linger_ms=0)",
    )
    payload["latency"] = {row.name: row.as_dict() for row in rows}


async def main_async(args: argparse.Namespace) -> int:
    url = kafka.resolve_url(args.url, args.broker)
    broker = kafka.Broker(
        url, args.partitions, args.timeout, await kafka.producer_is_idempotent(url)
    )
    print(f"idempotent producer: {broker.idempotent}", file=sys.stderr)
    payload: dict[str, Any] = {
        "bench": "kafka",
        "broker": args.broker if not args.url else url,
        "idempotent": broker.idempotent,
        "events": args.events,
        "repeat": args.repeat,
        "partitions": args.partitions,
        "concurrency": args.concurrency,
        "chunk": args.chunk,
    }
    status = 0
    if args.stages or args.latency:
        if args.stages:
            await stage_table(args, broker, payload)
        if args.latency:
            await latency(args, broker, payload)
    else:
        status = await throughput(args, broker, payload)
    runner.write_json(args.json, payload)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--url",
        default=None,
        help="kafka://host:port (default: $EVENTBUS_BENCH_KAFKA_URL, else start --broker)",
    )
    parser.add_argument(
        "--broker",
        choices=("apache", "tansu"),
        default="apache",
        help="which private broker to start when no URL is given (default: apache)",
    )
    runner.add_common_arguments(parser, events=5_000, repeat=3)
    parser.add_argument("--partitions", type=int, default=4, help="partitions of every topic")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="eventbus subscription concurrency"
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per wait")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--target-raw",
        type=float,
        default=0.5,
        help="eventbus / raw aiokafka at least this (issue 7: 0.5)",
    )
    parser.add_argument(
        "--target-faststream",
        type=float,
        default=3.0,
        help="eventbus / FastStream defaults at least this (issue 7: 3)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
