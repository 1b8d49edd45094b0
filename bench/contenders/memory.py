"""Contenders on the in-memory broker: eventbus's default chain, with idempotency,
and FastStream's in-memory test broker (``TestKafkaBroker``) doing the same work."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence

from runner import Contender, Counter, Tick, Timing, chunks

from eventbus import EventBus, MemoryIdempotencyStore
from eventbus.memory import MemoryBroker

EVENTBUS = "eventbus (corr+dlq+retry)"
EVENTBUS_IDEMPOTENT = "eventbus (+idempotency)"
FASTSTREAM = "faststream TestKafkaBroker"


def memory_url() -> str:
    """A private ``memory://<name>`` broker, so runs do not see each other's messages."""
    return f"memory://bench-{uuid.uuid4().hex}"


def forget(url: str) -> None:
    """Drop a ``memory://<name>`` broker and the log it retains (else later runs pay its GC)."""
    MemoryBroker.discard(url.removeprefix("memory://"))


async def eventbus_case(
    events: Sequence[Tick], *, chunk: int, idempotency: bool, timeout: float = 120.0,
    bus_factory: Callable[[str], EventBus] | None = None,
) -> Timing:
    """Default chain (correlation, dead-letter, retry), optionally + idempotency.

    ``bus_factory`` builds the bus from the URL instead (the stage table's empty chain).
    """
    url = memory_url()
    if bus_factory is not None:
        bus = bus_factory(url)
    else:
        bus = EventBus(
            url, source="bench", idempotency=MemoryIdempotencyStore() if idempotency else None
        )
    counter = Counter(len(events))

    @bus.subscribe(Tick, group="bench")
    async def handle(event: Tick) -> None:
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
        Contender(FASTSTREAM, lambda ev: faststream_case(ev, chunk=chunk)),
    ]
