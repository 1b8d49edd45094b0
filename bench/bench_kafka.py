"""End-to-end events/s on a real Kafka-protocol broker: eventbus against a
hand-written pipelined aiokafka loop and against FastStream's KafkaBroker.

::

    python bench/bench_kafka.py                      # starts a private Apache Kafka
    python bench/bench_kafka.py --broker tansu       # ... or a private Tansu
    python bench/bench_kafka.py --url kafka://127.0.0.1:9092 --events 20000 --repeat 3

Every contender does the same work in the same process, on the same broker, on
its own fresh topic (created up front with the admin client, same partition
count for all): publish N broker-confirmed events, consume all N in a consumer
group that commits, and validate each into the same pydantic model. The clock
runs from the first publish until the handler has seen the N-th event; joining
the group happens before it starts (see ``README.md`` for each configuration).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import io
import logging
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from eventbus_kafka import KafkaAdapter

from eventbus import Event, EventBus

PROBE_SEQ = -1
"""``seq`` of the one event each run sends before the clock starts (see :func:`Probe`)."""


class Tick(Event, type="bench.kafka.tick", topic="bench.kafka.ticks"):
    """A small, realistic event: a few scalars and a short list."""

    seq: int
    order_id: str
    amount_cents: int
    tags: list[str]


def make_events(n: int) -> list[Tick]:
    """``n`` distinct events, built before any timing starts."""
    return [
        Tick(seq=i, order_id=f"ord-{i:08d}", amount_cents=i % 10_000, tags=["a", "b"])
        for i in range(n)
    ]


PROBE = Tick(seq=PROBE_SEQ, order_id="probe", amount_cents=0, tags=[])


def chunks(events: Sequence[Tick], size: int) -> list[Sequence[Tick]]:
    """``events`` cut into publish batches of ``size``."""
    return [events[i : i + size] for i in range(0, len(events), size)]


@dataclass(frozen=True)
class Timing:
    """One run: seconds until the last event was handled / until every publish returned."""

    total: float
    publish: float


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
    probe_seen: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def see(self, event: Tick) -> None:
        if event.seq == PROBE_SEQ:
            self.probe_seen.set()
            return
        self.count += 1
        if self.count == self.expected:
            self.finished = time.perf_counter()
            self.done.set()

    def start(self) -> None:
        """The clock starts: the first publish is next."""
        self.started = time.perf_counter()

    def timing(self) -> Timing:
        return Timing(self.finished - self.started, self.published - self.started)

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


@dataclass(frozen=True)
class Broker:
    """The broker under test and how topics are made on it."""

    url: str
    partitions: int
    timeout: float
    # The raw loop gets the same producer guarantees as eventbus: idempotent where
    # the broker grants it (Apache Kafka), not where it refuses (Tansu).
    idempotent: bool = False

    @property
    def bootstrap(self) -> str:
        return urlsplit(self.url).netloc.rsplit("@", 1)[-1]

    async def new_topic(self, prefix: str) -> str:
        """A fresh topic with ``partitions`` partitions, so creation isn't timed."""
        name = f"bench-{prefix}-{uuid.uuid4().hex[:12]}"
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(name, num_partitions=self.partitions, replication_factor=1)]
            )
        finally:
            await admin.close()
        return name

    async def committed(self, topic: str, group: str) -> int:
        """Sum of the group's committed offsets on ``topic`` (records it has committed)."""
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(self.partitions)]
            offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
        finally:
            await admin.close()
        return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic)


async def check_committed(broker: Broker, name: str, topic: str, group: str, n: int) -> None:
    """After the consumer closed: the group committed every record (N + the probe)."""
    committed = await broker.committed(topic, group)
    if committed != n + 1:
        raise RuntimeError(f"{name}: group {group} committed {committed} of {n + 1} records")


# -- 1. eventbus ------------------------------------------------------------------------


async def eventbus_case(
    broker: Broker, events: Sequence[Tick], *, chunk: int, concurrency: int
) -> Timing:
    """``EventBus.from_url`` with its defaults; ``publish_many`` chunks gathered at once."""
    name = "eventbus"
    topic = await broker.new_topic("eventbus")
    group = f"bench-eventbus-{uuid.uuid4().hex[:12]}"
    counter = Counter(len(events))
    bus = EventBus.from_url(broker.url, source="bench")

    @bus.subscribe(topic, group=group, concurrency=concurrency, start_from="earliest")
    async def handle(event: Tick) -> None:
        counter.see(event)

    async with bus:
        await bus.publish(PROBE, topic=topic)
        await counter.wait_probe(name, broker.timeout)
        counter.start()
        await asyncio.gather(
            *(bus.publish_many(part, topic=topic) for part in chunks(events, chunk))
        )
        counter.published = time.perf_counter()
        await counter.wait_done(name, broker.timeout)
    await check_committed(broker, name, topic, group, len(events))
    return counter.timing()


# -- 2. raw aiokafka, pipelined ---------------------------------------------------------


async def raw_case(broker: Broker, events: Sequence[Tick]) -> Timing:
    """AIOKafkaProducer futures gathered; a getmany() loop that commits after each batch."""
    name = "raw aiokafka"
    topic = await broker.new_topic("raw")
    group = f"bench-raw-{uuid.uuid4().hex[:12]}"
    counter = Counter(len(events))
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap, acks="all", enable_idempotence=broker.idempotent,
        linger_ms=5,
    )
    # Topics in the constructor: start() returns once the group has its assignment.
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )

    async def consume() -> None:
        while not counter.done.is_set():
            batches = await consumer.getmany(timeout_ms=100)
            for records in batches.values():
                for record in records:
                    counter.see(Tick.model_validate_json(record.value))
            if batches:
                await consumer.commit()

    await producer.start()
    await consumer.start()
    consuming = asyncio.create_task(consume())
    try:
        await producer.send_and_wait(topic, PROBE.to_bytes())
        await counter.wait_probe(name, broker.timeout)
        counter.start()
        futures = [await producer.send(topic, event.to_bytes()) for event in events]
        await asyncio.gather(*futures)
        counter.published = time.perf_counter()
        await counter.wait_done(name, broker.timeout)
        await consuming
    finally:
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        await consumer.stop()
        await producer.stop()
    await check_committed(broker, name, topic, group, len(events))
    return counter.timing()


# -- 3. FastStream ----------------------------------------------------------------------


class Discard(io.StringIO):
    """A text stream that drops what it is given (log lines are still formatted)."""

    def write(self, text: str) -> int:
        return len(text)


async def faststream_case(
    broker: Broker, events: Sequence[Tick], *, chunk: int, access_log: bool
) -> Timing:
    """``KafkaBroker`` defaults; ``broker.publish`` (awaits the ack), ``chunk`` gathered at a time.

    ``access_log=True`` keeps FastStream's default per-message INFO logging
    (formatted and filtered as usual) but points its stdout handler at
    a stream that discards, so the cost is kept and the terminal doesn't scroll 2N lines.
    ``access_log=False`` is ``KafkaBroker(logger=None)``.
    """
    from faststream.kafka import KafkaBroker

    name = "faststream"
    topic = await broker.new_topic("faststream")
    group = f"bench-faststream-{uuid.uuid4().hex[:12]}"
    counter = Counter(len(events))
    options: dict[str, Any] = {} if access_log else {"logger": None}
    kafka = KafkaBroker(broker.bootstrap, **options)

    # auto_offset_reset="earliest" is the one non-default: the probe may be written
    # before the fresh group has looked up its position ("latest" would skip it).
    @kafka.subscriber(topic, group_id=group, auto_offset_reset="earliest")
    async def handle(event: Tick) -> None:
        counter.see(event)

    await kafka.start()  # subscribes before starting the consumer: waits for assignment
    access = logging.getLogger("faststream.access.kafka")
    redirected = [h for h in access.handlers if isinstance(h, logging.StreamHandler)]
    originals = [h.setStream(Discard()) for h in redirected]
    try:
        await kafka.publish(PROBE, topic)
        await counter.wait_probe(name, broker.timeout)
        counter.start()
        for part in chunks(events, chunk):
            await asyncio.gather(*(kafka.publish(event, topic) for event in part))
        counter.published = time.perf_counter()
        await counter.wait_done(name, broker.timeout)
    finally:
        await kafka.stop()  # auto-commit (FastStream's default) commits on close
        for handler, original in zip(redirected, originals, strict=True):
            if original is not None:
                handler.setStream(original)
    await check_committed(broker, name, topic, group, len(events))
    return counter.timing()


# -- running and reporting --------------------------------------------------------------

Case = Callable[[Sequence[Tick]], Awaitable[Timing]]


@dataclass
class Result:
    """The timed runs of one contender."""

    name: str
    events: int
    seconds: list[float] = field(default_factory=list)
    publish_seconds: list[float] = field(default_factory=list)

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


EVENTBUS = "eventbus"
RAW = "raw aiokafka (pipelined)"
FASTSTREAM = "faststream (defaults)"
FASTSTREAM_QUIET = "faststream (logger=None)"


def resolve_url(arg: str | None, flavour: str) -> str:
    """--url, else $EVENTBUS_BENCH_KAFKA_URL, else a private broker the test harness
    starts: Apache Kafka (``--broker apache``, the default) or Tansu."""
    url = arg or os.environ.get("EVENTBUS_BENCH_KAFKA_URL", "").strip()
    if url:
        return url
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    os.environ["EVENTBUS_TEST_KAFKA"] = flavour
    os.environ["EVENTBUS_TEST_METHODS"] = "process"
    from integration_tests.harness import get_endpoint  # stops what it started at exit

    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)  # the readiness probe's refused connects are expected
    try:
        endpoint = get_endpoint("kafka")
    finally:
        client_log.setLevel(level)
    print(f"broker: {endpoint.url} ({endpoint.how}, {endpoint.flavour})", file=sys.stderr)
    return endpoint.url


async def producer_is_idempotent(url: str) -> bool:
    """Whether eventbus's Kafka adapter got the idempotent producer on this broker."""
    adapter = KafkaAdapter(url)
    try:
        await adapter.connect()
        return bool(adapter.idempotent)
    finally:
        await adapter.close()


async def main_async(args: argparse.Namespace) -> int:
    url = resolve_url(args.url, args.broker)
    broker = Broker(url, args.partitions, args.timeout, await producer_is_idempotent(url))
    print(f"idempotent producer: {broker.idempotent}", file=sys.stderr)
    events = make_events(args.events)
    cases: dict[str, Case] = {
        EVENTBUS: lambda ev: eventbus_case(
            broker, ev, chunk=args.chunk, concurrency=args.concurrency
        ),
        RAW: lambda ev: raw_case(broker, ev),
        FASTSTREAM: lambda ev: faststream_case(broker, ev, chunk=args.chunk, access_log=True),
        FASTSTREAM_QUIET: lambda ev: faststream_case(
            broker, ev, chunk=args.chunk, access_log=False
        ),
    }
    selected = {k: v for k, v in cases.items() if not args.only or args.only in k}
    results = {name: Result(name, len(events)) for name in selected}
    if args.warmup:
        for name, case in selected.items():  # imports, connections, lazy setup
            print(f"warm-up: {name}", file=sys.stderr)
            await case(events[: max(1, len(events) // 10)])
    for run in range(args.repeat):  # interleaved, so machine noise hits everyone alike
        for name, case in selected.items():
            gc.collect()
            timing = await case(events)
            results[name].seconds.append(timing.total)
            results[name].publish_seconds.append(timing.publish)
            print(
                f"run {run + 1}/{args.repeat}: {name}: {timing.total:.3f}s "
                f"({len(events) / timing.total:,.0f}/s; publishes done at {timing.publish:.3f}s)",
                file=sys.stderr,
            )
    report(args, broker, list(results.values()))
    return check_targets(args, results)


def report(args: argparse.Namespace, broker: Broker, results: Sequence[Result]) -> None:
    versions = ", ".join(
        f"{dist} {importlib.metadata.version(dist)}" for dist in ("aiokafka", "faststream")
    )
    print(
        f"\n{args.events} events, {broker.partitions} partitions, best of {args.repeat}; "
        f"eventbus concurrency {args.concurrency}, chunk {args.chunk}; "
        f"python {platform.python_version()}, {versions}"
    )
    print(f"{'contender':<28} {'best s':>8} {'events/s':>10} {'median/s':>10} {'published at':>13}")
    for result in results:
        print(
            f"{result.name:<28} {result.best:>8.3f} {result.rate:>10,.0f} "
            f"{result.median_rate:>10,.0f} {result.publish_share:>13.0%}"
        )
    by_name = {r.name: r for r in results}
    ours = by_name.get(EVENTBUS)
    if ours is None:
        return
    print()
    for other, target in (
        (RAW, args.target_raw),
        (FASTSTREAM, args.target_faststream),
        (FASTSTREAM_QUIET, None),
    ):
        if other in by_name:
            ratio = ours.rate / by_name[other].rate
            goal = f"   (target >= {target:g}x)" if target else ""
            print(f"eventbus / {other:<26} {ratio:>6.2f}x{goal}")


def check_targets(args: argparse.Namespace, results: dict[str, Result]) -> int:
    """With --check: exit 1 when eventbus misses a target it was measured against."""
    ours = results.get(EVENTBUS)
    if not args.check or ours is None:
        return 0
    missed = [
        f"{other} ({ours.rate / results[other].rate:.2f}x < {target:g}x)"
        for other, target in ((RAW, args.target_raw), (FASTSTREAM, args.target_faststream))
        if other in results and ours.rate < target * results[other].rate
    ]
    if missed:
        print(f"\neventbus below target against: {', '.join(missed)}")
        return 1
    return 0


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
    parser.add_argument("--events", type=int, default=5_000, help="events per run")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per contender")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of every topic")
    parser.add_argument(
        "--chunk",
        type=int,
        default=500,
        help="events per publish_many (eventbus) / per gathered group of publish (faststream)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="eventbus subscription concurrency"
    )
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the untimed N/10 warm-up run of each contender",
    )
    parser.add_argument("--only", default="", help="run only contenders whose name contains this")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per wait")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--target-raw", type=float, default=0.8)
    parser.add_argument("--target-faststream", type=float, default=10.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
