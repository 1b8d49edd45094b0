"""Contenders on a real Kafka-protocol broker: eventbus, a hand-written pipelined
aiokafka loop doing the same work, and FastStream's ``KafkaBroker`` (defaults, and
``logger=None``). Also the raw client's lone round trip for ``--latency`` and the
Kafka wire codec for ``--stages``. See ``README.md`` for each configuration."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fair
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from runner import PROBE, Contender, Counter, Tick, Timing, chunks

from eventbus import Envelope, EventBus

EVENTBUS = "eventbus"
EVENTBUS_STRUCTURED = "eventbus (mode=structured)"
RAW = "raw aiokafka (pipelined)"
FAIR = "raw aiokafka + CloudEvents headers"
FASTSTREAM = "faststream (defaults)"
FASTSTREAM_QUIET = "faststream (logger=None)"


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

    async def check_committed(self, name: str, topic: str, group: str, n: int) -> None:
        """After the consumer closed: the group committed every record (N + the probe)."""
        committed = await self.committed(topic, group)
        if committed != n + 1:
            raise RuntimeError(f"{name}: group {group} committed {committed} of {n + 1} records")


def resolve_url(arg: str | None, flavour: str) -> str:
    """--url, else $EVENTBUS_BENCH_KAFKA_URL, else a private broker the test harness
    starts: Apache Kafka (``--broker apache``, the default) or Tansu."""
    url = arg or os.environ.get("EVENTBUS_BENCH_KAFKA_URL", "").strip()
    if url:
        return url
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
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


def with_option(url: str, option: str) -> str:
    """``url`` with one more ``name=value`` query option."""
    return url + ("&" if "?" in url else "?") + option


async def producer_is_idempotent(url: str) -> bool:
    """Whether eventbus's Kafka adapter got the idempotent producer on this broker."""
    bus = EventBus.from_url(url)
    adapter = bus.adapter
    try:
        await adapter.connect()
        return bool(getattr(adapter, "idempotent", False))
    finally:
        await adapter.close()


# -- 1. eventbus ------------------------------------------------------------------------


async def eventbus_case(
    broker: Broker,
    events: Sequence[Tick],
    *,
    chunk: int,
    concurrency: int,
    bus_factory: Callable[[str], EventBus] | None = None,
    name: str = EVENTBUS,
) -> Timing:
    """``EventBus.from_url`` with its defaults; ``publish_many`` chunks gathered at once."""
    topic = await broker.new_topic("eventbus")
    group = f"bench-eventbus-{uuid.uuid4().hex[:12]}"
    counter = Counter(len(events))
    bus = (bus_factory or (lambda url: EventBus.from_url(url, source="bench")))(broker.url)

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
        counter.mark_published()
        await counter.wait_done(name, broker.timeout)
    # The adapter's Kafka group.id is per (group, topic).
    from eventbus_kafka.rebalance import kafka_group_id

    await broker.check_committed(name, topic, kafka_group_id(group, topic), len(events))
    return counter.timing()


# -- 2. raw aiokafka, pipelined ---------------------------------------------------------


def raw_producer(broker: Broker, linger_ms: int = 5) -> AIOKafkaProducer:
    """The raw loop's producer: eventbus's guarantees (acks=all, same idempotence)."""
    return AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap,
        acks="all",
        enable_idempotence=broker.idempotent,
        linger_ms=linger_ms,
    )


def raw_consumer(broker: Broker, topic: str, group: str) -> AIOKafkaConsumer:
    # Topics in the constructor: start() returns once the group has its assignment.
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )


async def raw_consume(
    consumer: AIOKafkaConsumer,
    seen: Callable[[Tick], None],
    done: asyncio.Event,
    *,
    headers: bool = False,
) -> None:
    """getmany(100 ms), validate each value into ``Tick``, commit after each batch;
    with ``headers``, each record's CloudEvents headers read and checked first."""
    while not done.is_set():
        batches = await consumer.getmany(timeout_ms=100)
        for records in batches.values():
            for record in records:
                if headers:
                    seen(fair.read_binary(record.headers, record.value, fair.KAFKA))
                else:
                    seen(Tick.model_validate_json(record.value))
        if batches:
            await consumer.commit()


async def raw_case(broker: Broker, events: Sequence[Tick], *, headers: bool = False) -> Timing:
    """AIOKafkaProducer futures gathered; a getmany() loop that commits after each batch.

    ``headers``: the fair contender, every record sent with a new event's CloudEvents
    headers (``fair.header_list``) and read back through them."""
    name = FAIR if headers else RAW
    topic = await broker.new_topic("raw")
    group = f"bench-raw-{uuid.uuid4().hex[:12]}"
    counter = Counter(len(events))
    producer = raw_producer(broker)
    consumer = raw_consumer(broker, topic, group)
    await producer.start()
    await consumer.start()
    consuming = asyncio.create_task(
        raw_consume(consumer, counter.see, counter.done, headers=headers)
    )
    try:
        probe_headers = fair.header_list(fair.KAFKA) if headers else None
        await producer.send_and_wait(topic, PROBE.to_bytes(), headers=probe_headers)
        await counter.wait_probe(name, broker.timeout)
        counter.start()
        if headers:
            futures = [
                await producer.send(topic, event.to_bytes(), headers=fair.header_list(fair.KAFKA))
                for event in events
            ]
        else:
            futures = [await producer.send(topic, event.to_bytes()) for event in events]
        await asyncio.gather(*futures)
        counter.mark_published()
        await counter.wait_done(name, broker.timeout)
        await consuming
    finally:
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        await consumer.stop()
        await producer.stop()
    await broker.check_committed(name, topic, group, len(events))
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

    name = FASTSTREAM if access_log else FASTSTREAM_QUIET
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
        counter.mark_published()
        await counter.wait_done(name, broker.timeout)
    finally:
        await kafka.stop()  # auto-commit (FastStream's default) commits on close
        for handler, original in zip(redirected, originals, strict=True):
            if original is not None:
                handler.setStream(original)
    await broker.check_committed(name, topic, group, len(events))
    return counter.timing()


def contenders(broker: Broker, *, chunk: int, concurrency: int) -> list[Contender]:
    """What ``bench_kafka.py`` runs, eventbus first."""
    return [
        Contender(
            EVENTBUS,
            lambda ev: eventbus_case(broker, ev, chunk=chunk, concurrency=concurrency),
            ours=True,
        ),
        Contender(
            EVENTBUS_STRUCTURED,
            lambda ev: eventbus_case(
                broker,
                ev,
                chunk=chunk,
                concurrency=concurrency,
                name=EVENTBUS_STRUCTURED,
                bus_factory=lambda url: EventBus.from_url(
                    with_option(url, "mode=structured"), source="bench"
                ),
            ),
            ours=True,
        ),
        Contender(FAIR, lambda ev: raw_case(broker, ev, headers=True)),
        Contender(RAW, lambda ev: raw_case(broker, ev)),
        Contender(FASTSTREAM, lambda ev: faststream_case(broker, ev, chunk=chunk, access_log=True)),
        Contender(
            FASTSTREAM_QUIET, lambda ev: faststream_case(broker, ev, chunk=chunk, access_log=False)
        ),
    ]


# -- latency: the raw client's lone round trip ------------------------------------------


async def raw_latency(
    broker: Broker, round_trips: int, warmup: int, *, linger_ms: int = 0
) -> list[float]:
    """Seconds from ``send_and_wait`` to the consumer loop validating that record, one at a time."""
    topic = await broker.new_topic("raw-latency")
    group = f"bench-raw-latency-{uuid.uuid4().hex[:12]}"
    producer = raw_producer(broker, linger_ms)
    consumer = raw_consumer(broker, topic, group)
    arrived: asyncio.Queue[float] = asyncio.Queue()
    stop = asyncio.Event()

    def seen(event: Tick) -> None:
        arrived.put_nowait(time.perf_counter())

    await producer.start()
    await consumer.start()
    consuming = asyncio.create_task(raw_consume(consumer, seen, stop))
    samples: list[float] = []
    try:
        for index in range(warmup + round_trips):
            started = time.perf_counter()
            await producer.send_and_wait(topic, PROBE.to_bytes())
            handled = await asyncio.wait_for(arrived.get(), broker.timeout)
            if index >= warmup:
                samples.append(handled - started)
    finally:
        stop.set()
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        await consumer.stop()
        await producer.stop()
    return samples


async def raw_send_cpu(broker: Broker, records: Sequence[Any], *, headers: bool) -> float:
    """CPU seconds for a raw producer (eventbus's settings) to send ``records`` and get
    every ack: with their CloudEvents headers, or the same key and value without."""
    topic = await broker.new_topic("raw-headers")
    producer = raw_producer(broker)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{}")  # metadata and connection, untimed
        started = time.process_time()
        futures = [
            await producer.send(topic, r.value, key=r.key, headers=r.headers if headers else None)
            for r in records
        ]
        await asyncio.gather(*futures)
        return time.process_time() - started
    finally:
        await producer.stop()


# -- stages: the Kafka wire codec -------------------------------------------------------


class KafkaWire:
    """The Kafka adapter's record codec (``eventbus_kafka.codec``), for the stage table."""

    name = "kafka binary (ce_ headers)"

    def __init__(self) -> None:
        from eventbus_kafka import codec

        self._codec = codec

    def encode(self, envelope: Envelope) -> Any:
        return self._codec.encode(envelope)

    def decode(self, record: Any) -> Any:
        return self._codec.decode(record.key, record.value, record.headers)
