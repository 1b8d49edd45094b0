"""Contenders on a real NATS server, JetStream and core: eventbus, a hand-written
pipelined nats-py loop doing the same work, and FastStream's ``NatsBroker`` with
its defaults. See ``README.md`` for each configuration.

Same work everywhere: publish N events (JetStream: every PubAck awaited; core:
written and flushed), consume all N in a group (JetStream: a durable consumer,
every message acked; core: a queue group), validate each into ``Tick``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fair
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig
from runner import PROBE, Contender, Counter, Tick, Timing, chunks

from eventbus import EventBus

EVENTBUS = "eventbus"
RAW = "raw nats-py (pipelined)"
FAIR = "raw nats-py + CloudEvents headers"
FASTSTREAM = "faststream (defaults)"


@dataclass(frozen=True)
class Server:
    """The NATS server under test (``host:port``) and the mode."""

    address: str
    jetstream: bool
    timeout: float = 120.0

    @property
    def plain_url(self) -> str:
        return f"nats://{self.address}"

    @property
    def eventbus_url(self) -> str:
        return f"{'nats' if self.jetstream else 'nats+core'}://{self.address}"


def resolve_address(arg: str | None) -> str:
    """--url, else $EVENTBUS_BENCH_NATS_URL, else the NATS the test harness finds."""
    url = arg or os.environ.get("EVENTBUS_BENCH_NATS_URL", "").strip()
    if not url:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from integration_tests.harness import get_endpoint

        endpoint = get_endpoint("nats")
        url = endpoint.url
        print(f"server: {url} ({endpoint.how})", file=sys.stderr)
    return url.split("://", 1)[-1].rsplit("@", 1)[-1]


class Discard(io.StringIO):
    """A text stream that drops what it is given (log lines are still formatted)."""

    def write(self, text: str) -> int:
        return len(text)


def fresh(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:10]}"


async def eventbus_case(
    server: Server, events: Sequence[Tick], *, chunk: int, concurrency: int
) -> Timing:
    """``EventBus.from_url`` defaults; ``publish_many`` chunks gathered at once."""
    topic, group = fresh("eventbus"), fresh("g")
    counter = Counter(len(events))
    bus = EventBus.from_url(server.eventbus_url, source="bench")

    @bus.subscribe(topic, group=group, concurrency=concurrency, start_from="earliest")
    async def handle(event: Tick) -> None:
        counter.see(event)

    async with bus:
        await bus.publish(PROBE, topic=topic)
        await counter.wait_probe(EVENTBUS, server.timeout)
        counter.start()
        await asyncio.gather(
            *(bus.publish_many(part, topic=topic) for part in chunks(events, chunk))
        )
        counter.mark_published()
        await counter.wait_done(EVENTBUS, server.timeout)
    return counter.timing()


async def raw_case(
    server: Server, events: Sequence[Tick], *, chunk: int, headers: bool = False
) -> Timing:
    """JetStream: js.publish_async for every event, all PubAck futures gathered; a pull
    consumer fetching batches of 256, validating and acking each. Core: publish +
    flush per chunk, a queue subscription validating each.

    ``headers``: the fair contender, every message sent with a new event's ``ce-``
    headers (``fair.NATS``) and read back through them."""
    name = FAIR if headers else RAW

    def read(msg: Any) -> Tick:
        if headers:
            return fair.read_binary((msg.headers or {}).items(), msg.data, fair.NATS)
        return Tick.model_validate_json(msg.data)

    def wire() -> dict[str, str] | None:
        return fair.headers(fair.NATS) if headers else None

    subject = fresh("raw")
    counter = Counter(len(events))
    nc = await nats.connect(server.plain_url)
    bodies = [event.to_bytes() for event in events]
    task: asyncio.Task[None] | None = None
    try:
        if server.jetstream:
            js = nc.jetstream()
            await js.add_stream(StreamConfig(name=f"RAW_{subject}", subjects=[subject]))
            sub = await js.pull_subscribe(
                subject,
                durable="g",
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL
                ),
            )

            async def consume() -> None:
                while not counter.done.is_set():
                    try:
                        msgs = await sub.fetch(256, timeout=1.0)
                    except nats.errors.TimeoutError:
                        continue
                    for msg in msgs:
                        counter.see(read(msg))
                        await msg.ack()

            task = asyncio.create_task(consume())
            await js.publish(subject, PROBE.to_bytes(), headers=wire())
            await counter.wait_probe(name, server.timeout)
            counter.start()

            # nats-py's pipelined publish: publish_async returns the PubAck future at
            # once (at most 4,000 in flight by default), all of them awaited together.
            # Cheaper per message than gathering js.publish requests (~46 against ~75
            # us of CPU per event, publish and consume, in one run).
            futures = [await js.publish_async(subject, body, headers=wire()) for body in bodies]
            await asyncio.gather(*futures)
        else:

            async def on_msg(msg: Any) -> None:
                counter.see(read(msg))

            await nc.subscribe(subject, queue="g", cb=on_msg)
            await nc.flush()
            await nc.publish(subject, PROBE.to_bytes(), headers=wire())
            await counter.wait_probe(name, server.timeout)
            counter.start()
            for part in chunks(bodies, chunk):
                for body in part:
                    await nc.publish(subject, body, headers=wire())
                await nc.flush()
        counter.mark_published()
        await counter.wait_done(name, server.timeout)
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await nc.close()
    return counter.timing()


async def faststream_case(server: Server, events: Sequence[Tick], *, chunk: int) -> Timing:
    """``NatsBroker`` defaults (its per-message access log kept, written nowhere);
    ``broker.publish`` (JetStream: with ``stream=``, awaiting the PubAck), ``chunk``
    gathered at a time."""
    from faststream.nats import JStream, NatsBroker

    subject = fresh("faststream")
    counter = Counter(len(events))
    broker = NatsBroker(server.plain_url)
    stream = (
        JStream(f"FS_{subject}".replace("-", "_"), subjects=[subject]) if server.jetstream else None
    )
    options: dict[str, Any] = {"stream": stream, "durable": "g"} if stream else {"queue": "g"}

    @broker.subscriber(subject, **options)
    async def handle(event: Tick) -> None:
        counter.see(event)

    await broker.start()
    access = logging.getLogger("faststream.access.nats")
    for handler in access.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(Discard())  # formatted as usual, written nowhere
    publish: dict[str, Any] = {"stream": stream.name} if stream else {}
    try:
        await broker.publish(PROBE, subject, **publish)
        await counter.wait_probe(FASTSTREAM, server.timeout)
        counter.start()
        for part in chunks(events, chunk):
            await asyncio.gather(*(broker.publish(event, subject, **publish) for event in part))
        counter.mark_published()
        await counter.wait_done(FASTSTREAM, server.timeout)
    finally:
        await broker.stop()
    return counter.timing()


def contenders(server: Server, *, chunk: int, concurrency: int) -> list[Contender]:
    """What ``bench_nats.py`` runs for one mode, eventbus first."""
    return [
        Contender(
            EVENTBUS,
            lambda ev: eventbus_case(server, ev, chunk=chunk, concurrency=concurrency),
            ours=True,
        ),
        Contender(FAIR, lambda ev: raw_case(server, ev, chunk=chunk, headers=True)),
        Contender(RAW, lambda ev: raw_case(server, ev, chunk=chunk)),
        Contender(FASTSTREAM, lambda ev: faststream_case(server, ev, chunk=chunk)),
    ]


def describe(server: Server) -> str:
    return json.dumps({"server": server.address, "jetstream": server.jetstream})
