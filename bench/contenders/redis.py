"""Contenders on a real Redis, in both modes: eventbus, a hand-written pipelined
redis-py loop doing the same work, and FastStream's ``RedisBroker`` defaults.

Streams: publish N confirmed events (XADD replies), consume them in a consumer
group, validate each into the same pydantic model, XACK each. Pub/Sub: publish N
confirmed events (PUBLISH replies), receive and validate them. Each run uses its
own fresh stream/channel and group.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import fair
from redis.asyncio import Redis
from runner import PROBE, Contender, Counter, Tick, Timing, chunks

from eventbus import EventBus

Mode = Literal["streams", "pubsub"]
EVENTBUS = "eventbus"
RAW = "raw redis-py (pipelined)"
FAIR = "raw redis-py + CloudEvents"
FASTSTREAM = "faststream (defaults)"
FASTSTREAM_GATHER = 50


@dataclass
class Broker:
    """Where the contenders run: ``redis://host:port/db``."""

    url: str
    timeout: float = 120.0

    def bus_url(self, mode: Mode) -> str:
        return (
            self.url.replace("redis://", "redis+streams://", 1) if mode == "streams" else self.url
        )

    def new_topic(self, who: str) -> str:
        return f"bench-{who}-{uuid.uuid4().hex[:12]}"


async def eventbus_case(
    broker: Broker, mode: Mode, events: Sequence[Tick], *, chunk: int, concurrency: int
) -> Timing:
    """``EventBus.from_url`` with its defaults; ``publish_many`` chunks gathered at once."""
    topic = broker.new_topic("eventbus")
    counter = Counter(len(events))
    bus = EventBus.from_url(broker.bus_url(mode), source="bench")

    @bus.subscribe(
        topic, group=f"bench-{uuid.uuid4().hex[:8]}", concurrency=concurrency, start_from="earliest"
    )
    async def handle(event: Tick) -> None:
        counter.see(event)

    async with bus:
        await bus.publish(PROBE, topic=topic)
        await counter.wait_probe(EVENTBUS, broker.timeout)
        counter.start()
        await asyncio.gather(
            *(bus.publish_many(part, topic=topic) for part in chunks(events, chunk))
        )
        counter.mark_published()
        await counter.wait_done(EVENTBUS, broker.timeout)
    await _cleanup(broker, topic)
    return counter.timing()


async def raw_case(
    broker: Broker, mode: Mode, events: Sequence[Tick], *, chunk: int, cloudevents: bool = False
) -> Timing:
    """Pipelined XADD/PUBLISH of each chunk, gathered; an XREADGROUP (or pubsub) loop that
    validates every event and XACKs each batch in one call.

    ``cloudevents``: the fair contender, what the Redis adapter writes built by hand:
    Streams, a new event's ``ce_`` fields beside ``body`` (``fair.REDIS_STREAMS``);
    Pub/Sub, the structured JSON document (``fair.structured``); each read back."""
    name = f"{FAIR if cloudevents else RAW} {mode}"
    topic = broker.new_topic("raw")
    counter = Counter(len(events))
    client = Redis.from_url(broker.url)
    reader = Redis.from_url(broker.url)
    group = "bench"
    pubsub: Any = None
    if mode == "streams":
        await client.xgroup_create(topic, group, id="0", mkstream=True)
    else:
        pubsub = reader.pubsub()
        await pubsub.subscribe(topic)
        await pubsub.get_message(timeout=5.0)  # the subscribe confirmation

    async def consume() -> None:
        while not counter.done.is_set():
            if mode == "streams":
                reply = await reader.xreadgroup(group, "c1", {topic: ">"}, count=500, block=100)
                for _, entries in reply or ():
                    for _, fields in entries:
                        body = fields.pop(b"body")
                        if cloudevents:
                            counter.see(fair.read_binary(fields.items(), body, fair.REDIS_STREAMS))
                        else:
                            counter.see(Tick.model_validate_json(body))
                    await reader.xack(topic, group, *(entry_id for entry_id, _ in entries))
            else:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if message is not None and cloudevents:
                    counter.see(fair.read_structured(message["data"]))
                elif message is not None:
                    counter.see(Tick.model_validate_json(message["data"]))

    async def send(part: Sequence[Tick]) -> None:
        pipe = client.pipeline(transaction=False)
        for event in part:
            if mode == "streams":
                fields: dict[Any, Any] = fair.headers(fair.REDIS_STREAMS) if cloudevents else {}
                fields["body"] = event.to_bytes()
                pipe.xadd(topic, fields, maxlen=1_000_000, approximate=True)
            else:
                pipe.publish(topic, fair.structured(event) if cloudevents else event.to_bytes())
        await pipe.execute()

    consuming = asyncio.create_task(consume())
    try:
        await send([PROBE])
        await counter.wait_probe(name, broker.timeout)
        counter.start()
        await asyncio.gather(*(send(part) for part in chunks(events, chunk)))
        counter.mark_published()
        await counter.wait_done(name, broker.timeout)
    finally:
        consuming.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consuming
        if pubsub is not None:
            await pubsub.aclose()
        await reader.aclose()
        await client.aclose()
    await _cleanup(broker, topic)
    return counter.timing()


class _Discard(io.StringIO):
    def write(self, text: str) -> int:
        return len(text)


async def faststream_case(
    broker: Broker, mode: Mode, events: Sequence[Tick], *, chunk: int
) -> Timing:
    """``RedisBroker`` defaults: a channel subscriber (Pub/Sub) or a stream subscriber in a
    group (Streams); ``broker.publish`` awaited, 50 gathered at a time. Its
    per-message access log is kept but written to a stream that discards."""
    from faststream.redis import RedisBroker, StreamSub

    topic = broker.new_topic("faststream")
    counter = Counter(len(events))
    redis = RedisBroker(broker.url)
    if mode == "streams":
        target: Any = StreamSub(topic, group="bench", consumer="c1", last_id="0")
        publish_to: dict[str, Any] = {"stream": topic}
    else:
        target = topic
        publish_to = {"channel": topic}

    @redis.subscriber(stream=target) if mode == "streams" else redis.subscriber(channel=target)
    async def handle(event: Tick) -> None:
        counter.see(event)

    await redis.start()
    access = logging.getLogger("faststream.access.redis")
    redirected = [h for h in access.handlers if isinstance(h, logging.StreamHandler)]
    originals = [h.setStream(_Discard()) for h in redirected]
    try:
        await redis.publish(PROBE, **publish_to)
        await counter.wait_probe(FASTSTREAM, broker.timeout)
        counter.start()
        # Its default pool refuses more connections than this at once
        # (MaxConnectionsError), so fewer publishes are gathered at a time.
        for part in chunks(events, min(chunk, FASTSTREAM_GATHER)):
            await asyncio.gather(*(redis.publish(event, **publish_to) for event in part))
        counter.mark_published()
        await counter.wait_done(FASTSTREAM, broker.timeout)
    finally:
        await redis.stop()
        for handler, original in zip(redirected, originals, strict=True):
            if original is not None:
                handler.setStream(original)
    await _cleanup(broker, topic)
    return counter.timing()


async def _cleanup(broker: Broker, topic: str) -> None:
    client = Redis.from_url(broker.url)
    try:
        await client.delete(topic)
    finally:
        await client.aclose()


def contenders(broker: Broker, mode: Mode, *, chunk: int, concurrency: int) -> list[Contender]:
    """What ``bench_redis.py`` runs for ``mode``, eventbus first."""
    return [
        Contender(
            f"{EVENTBUS} {mode}",
            lambda ev: eventbus_case(broker, mode, ev, chunk=chunk, concurrency=concurrency),
            ours=True,
        ),
        Contender(
            f"{FAIR} {mode}", lambda ev: raw_case(broker, mode, ev, chunk=chunk, cloudevents=True)
        ),
        Contender(f"{RAW} {mode}", lambda ev: raw_case(broker, mode, ev, chunk=chunk)),
        Contender(
            f"{FASTSTREAM} {mode}", lambda ev: faststream_case(broker, mode, ev, chunk=chunk)
        ),
    ]
