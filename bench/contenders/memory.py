"""Contenders on the in-memory broker: eventbus's default chain, with idempotency,
and FastStream's in-memory test broker (``TestKafkaBroker``) doing the same work."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from runner import Contender, Counter, Tick, Timing, chunks

import eventbus.memory
from eventbus import Envelope, EventBus, MemoryIdempotencyStore, codec
from eventbus.memory import MemoryBroker

EVENTBUS = "eventbus (corr+dlq+retry)"
EVENTBUS_IDEMPOTENT = "eventbus (+idempotency)"
EVENTBUS_BATCH = "eventbus (batch=100)"
EVENTBUS_UNENCODED = "eventbus (encode=false)"
FASTSTREAM = "faststream TestKafkaBroker"


def memory_url(extra: str = "") -> str:
    """A private ``memory://<name>`` broker, so runs do not see each other's messages.

    Options from ``$EVENTBUS_BENCH_MEMORY_OPTIONS`` (e.g. ``mode=structured``) are appended,
    then ``extra`` (e.g. ``encode=false``).
    """
    options = os.environ.get("EVENTBUS_BENCH_MEMORY_OPTIONS", "").strip().lstrip("?")
    options = "&".join(part for part in (options, extra) if part)
    return f"memory://bench-{uuid.uuid4().hex}" + (f"?{options}" if options else "")


def forget(url: str) -> None:
    """Drop a ``memory://<name>`` broker and the log it retains (else later runs pay its GC)."""
    discard = getattr(MemoryBroker, "discard", None)
    if discard is not None:
        discard(urlsplit(url).netloc)


class MemoryWire:
    """The CloudEvents codec the memory adapter applies when it encodes what it stores
    (binary mode by default, structured with ``?mode=structured``), for the stage table."""

    def __init__(self, mode: str, prefix: str) -> None:
        self.mode = mode
        self.prefix = prefix
        self.name = f"memory {mode}"

    def encode(self, envelope: Envelope) -> Any:
        if self.mode == "structured":
            return codec.encode_structured(envelope)
        return codec.encode_binary(envelope, self.prefix)

    def decode(self, record: Any) -> Envelope:
        if self.mode == "structured":
            return codec.decode_structured(record)
        headers, body = record
        # What the memory broker reads a stored message with (a dict of text values).
        return codec.decode_binary_dict(dict(headers), body, self.prefix)


def wire_for(url: str) -> MemoryWire | None:
    """The memory adapter's codec if it encodes messages at ``url``, else ``None`` (it
    then hands the published ``Envelope`` objects over as they are)."""
    settings = getattr(EventBus(url).adapter, "settings", None)
    if settings is None or not getattr(settings, "encode", False):
        return None
    prefix = getattr(eventbus.memory, "HEADER_PREFIX", codec.DEFAULT_PREFIX)
    return MemoryWire(str(getattr(settings, "mode", "binary")), prefix)


async def eventbus_case(
    events: Sequence[Tick],
    *,
    chunk: int,
    idempotency: bool,
    timeout: float = 120.0,
    bus_factory: Callable[[str], EventBus] | None = None,
    batch: int | None = None,
    url_options: str = "",
) -> Timing:
    """Default chain (correlation, dead-letter, retry), optionally + idempotency.

    ``bus_factory`` builds the bus from the URL instead (the stage table's empty chain);
    ``batch``: a batch handler (``subscribe(..., batch=N)``) taking lists of ``Tick``;
    ``url_options``: appended to the ``memory://`` URL (``encode=false``: the core
    without the wire codec).
    """
    url = memory_url(url_options)
    if bus_factory is not None:
        bus = bus_factory(url)
    else:
        bus = EventBus(
            url, source="bench", idempotency=MemoryIdempotencyStore() if idempotency else None
        )
    counter = Counter(len(events))

    if batch is None:

        @bus.subscribe(Tick, group="bench")
        async def handle(event: Tick) -> None:
            counter.see(event)
    else:

        @bus.subscribe(Tick, group="bench", batch=batch)
        async def handle_batch(events: list[Tick]) -> None:
            for event in events:
                counter.see(event)

    try:
        async with bus:
            counter.start()
            await asyncio.gather(*(bus.publish_many(part) for part in chunks(events, chunk)))
            counter.mark_published()
            await counter.wait_done("eventbus", timeout)
    finally:
        forget(url)
    return counter.timing()


async def faststream_case(events: Sequence[Tick], *, chunk: int) -> Timing:
    """FastStream KafkaBroker under TestKafkaBroker: publish delivers in memory.

    ``logger=None``: no per-message log lines (eventbus logs none either), the
    fastest FastStream setup.
    """
    from faststream.kafka import KafkaBroker, TestKafkaBroker

    broker = KafkaBroker(logger=None)
    topic = f"bench-{uuid.uuid4().hex}"
    counter = Counter(len(events))

    @broker.subscriber(topic)
    async def handle(event: Tick) -> None:
        counter.see(event)

    async with TestKafkaBroker(broker) as test_broker:
        counter.start()
        for part in chunks(events, chunk):
            await asyncio.gather(*(test_broker.publish(event, topic) for event in part))
        counter.mark_published()
    if counter.count != len(events):
        raise RuntimeError(f"FastStream handled {counter.count} of {len(events)}")
    return counter.timing()


def contenders(*, chunk: int) -> list[Contender]:
    """What ``bench_memory.py`` runs, eventbus first."""
    return [
        Contender(EVENTBUS, lambda ev: eventbus_case(ev, chunk=chunk, idempotency=False), True),
        Contender(
            EVENTBUS_IDEMPOTENT, lambda ev: eventbus_case(ev, chunk=chunk, idempotency=True), True
        ),
        Contender(
            EVENTBUS_UNENCODED,
            lambda ev: eventbus_case(
                ev, chunk=chunk, idempotency=False, url_options="encode=false"
            ),
            True,
        ),
        Contender(
            EVENTBUS_BATCH,
            lambda ev: eventbus_case(ev, chunk=chunk, idempotency=False, batch=100),
            True,
        ),
        Contender(FASTSTREAM, lambda ev: faststream_case(ev, chunk=chunk)),
    ]
