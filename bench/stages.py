"""The per-stage cost table: microseconds per event for each step of the hot path.

Every figure is CPU time of this process (``time.process_time``), not wall time:
other processes on a shared machine do not count, nor does the broker's own work
(Kafka's JVM); waiting for the network costs nothing. So the stages add up to
what the client spends per event, and the two derived rows are meaningful even
where publishing and consuming overlap.

Each stage runs in isolation over the same N events, through public or
adapter-level API only (so it survives changes inside the core):

- serialize: ``event.to_bytes()`` (pydantic to JSON);
- build envelope: ``build_envelopes`` of ``--chunk`` events at a time, what
  ``publish_many`` does first, minus serialize (ids, time, fields);
- encode / decode: the broker's wire codec, if it has one (memory hands the
  ``Envelope`` object over, so both are zero there);
- adapter publish: ``adapter.publish(topic, chunk)`` of pre-built envelopes,
  chunks gathered; minus encode where the adapter encodes inside (Kafka);
- adapter receive: a subscription opened on the adapter with room for all N,
  drained without the bus and without settling; minus decode where the
  adapter decodes while handing out (Kafka);
- validate: ``registry.decode(envelope, Tick)`` (pydantic from JSON);
- settle/commit: ``delivery.ack()`` of every drained delivery, plus one
  ``commit()`` where the subscription offers it (Kafka commits in batches);
- middleware chain (derived): the whole bus end to end with the default chain
  minus the same with an empty chain (``chain_for`` returning ``[]``);
- handler dispatch (derived): the empty-chain bus end to end minus every
  measured stage above: the runner's routing, lanes, ``Context``, the handler
  call, and on a real broker whatever waiting the pipelining did not hide.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from runner import Tick, Timing, chunks

from eventbus import Envelope, EventBus, SubscribeOptions, registry
from eventbus.codec import encode_structured
from eventbus.publishing import build_envelopes


class WireCodec(Protocol):
    """A broker's wire codec as the stage table uses it."""

    name: str

    def encode(self, envelope: Envelope) -> Any: ...

    def decode(self, record: Any) -> Any: ...


class EmptyChainBus(EventBus):
    """A bus whose subscriptions run no middleware: the handler is called directly."""

    def chain_for(self, spec: Any) -> list[Any]:
        return []


E2E = Callable[[Sequence[Tick], Callable[[str], EventBus] | None], Awaitable[Timing]]
"""Runs the whole bus end to end over the events; the factory (or ``None``: the default
bus) builds the bus from the broker URL."""


@dataclass
class Stage:
    name: str
    seconds: list[float] = field(default_factory=list)
    how: str = "measured"
    derived: float | None = None  # per-event seconds when derived

    def per_event(self, n: int) -> float:
        if self.derived is not None:
            return self.derived
        return min(self.seconds) / n if self.seconds else 0.0


def _timed(items: Sequence[Any], fn: Callable[[Any], object]) -> float:
    """CPU seconds for ``fn`` over every item, results dropped as they come."""
    started = time.process_time()
    for item in items:
        fn(item)
    return time.process_time() - started


async def _drain(subscription: Any, n: int, timeout: float) -> list[Any]:
    deliveries: list[Any] = []
    iterator = subscription.__aiter__()

    async def take() -> None:
        while len(deliveries) < n:
            deliveries.append(await iterator.__anext__())

    try:
        await asyncio.wait_for(take(), timeout)
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
    return deliveries


async def _receive(subscription: Any, n: int, timeout: float) -> tuple[float, float]:
    """(receive, settle) seconds: drain ``n`` deliveries, then ack them (and commit)."""
    started = time.process_time()
    deliveries = await _drain(subscription, n, timeout)
    receive = time.process_time() - started
    started = time.process_time()
    for delivery in deliveries:
        await delivery.ack()
    commit = getattr(subscription, "commit", None)
    if commit is not None:
        await commit()
    return receive, time.process_time() - started


async def _adapter_round(
    url: str,
    topic: str,
    envelopes: Sequence[Envelope],
    *,
    chunk: int,
    subscribe_first: bool,
    timeout: float,
) -> tuple[float, float, float]:
    """(publish, receive, settle) seconds for the envelopes through a bare adapter."""
    bus = EventBus(url, source="bench")  # only to build the adapter from the URL
    adapter = bus.adapter
    n = len(envelopes)
    options = SubscribeOptions(
        group=f"bench-stages-{uuid.uuid4().hex[:12]}", prefetch=n + 1, start_from="earliest"
    )
    await adapter.connect()
    publish = receive = settle = 0.0
    try:
        if subscribe_first:
            # A broker without a background fetcher (memory): one chunk at a time.
            subscription = await adapter.subscribe(topic, options)
            gc.collect()
            for part in chunks(envelopes, chunk):
                started = time.process_time()
                await adapter.publish(topic, part)
                publish += time.process_time() - started
                receive_part, settle_part = await _receive(subscription, len(part), timeout)
                receive += receive_part
                settle += settle_part
        else:
            # A broker client fetching in the background (Kafka): publish everything
            # before subscribing, so the fetcher does not run inside the publish clock.
            # Either way deliveries are taken and settled a chunk at a time, so no
            # more objects are alive at once than in the bus's own pipeline.
            gc.collect()
            started = time.process_time()
            await asyncio.gather(
                *(adapter.publish(topic, part) for part in chunks(envelopes, chunk))
            )
            publish = time.process_time() - started
            subscription = await adapter.subscribe(topic, options)
            for part in chunks(envelopes, chunk):
                receive_part, settle_part = await _receive(subscription, len(part), timeout)
                receive += receive_part
                settle += settle_part
        await subscription.close()
    finally:
        await adapter.close()
    return publish, receive, settle


async def measure(
    url_factory: Callable[[], str],
    topic_factory: Callable[[], Awaitable[str]],
    events: Sequence[Tick],
    e2e: E2E,
    *,
    wire: WireCodec | None,
    chunk: int,
    repeat: int,
    subscribe_first: bool,
    timeout: float = 120.0,
) -> list[Stage]:
    """Every stage's best of ``repeat`` over ``events``; see the module docstring."""
    n = len(events)
    all_events, events = events, events[: max(1, n // 10)]
    bus = EventBus(url_factory(), source="bench")
    serialize, build = Stage("serialize (pydantic to_bytes)"), Stage("build envelope")
    encode, decode = Stage("encode (wire codec)"), Stage("decode (wire codec)")
    publish, receive = Stage("adapter publish"), Stage("adapter receive")
    validate, settle = Stage("validate (pydantic)"), Stage("settle/commit")
    structured = Stage("  ref: encode structured JSON")
    chain, dispatch = (
        Stage("middleware chain", how="derived"),
        Stage("handler dispatch", how="derived"),
    )
    total, bare = Stage("= end to end, default chain"), Stage("  ref: end to end, empty chain")
    for index in range(repeat + 1):  # round 0 warms up (imports, caches) and is dropped
        if index == 1:
            for stage in (
                serialize,
                build,
                encode,
                decode,
                publish,
                receive,
                validate,
                settle,
                structured,
                total,
                bare,
            ):
                stage.seconds.clear()
            events = all_events
        print(f"stages: {f'round {index}/{repeat}' if index else 'warm-up'}", file=sys.stderr)
        gc.collect()
        # Each stage is timed on a pass that drops what it makes, as the pipeline
        # does: a list holding N results would make the collector walk them all and
        # charge that to the stage. What later stages need is then built untimed.
        serialize.seconds.append(_timed(events, lambda e: e.to_bytes()))
        build.seconds.append(
            _timed(chunks(events, chunk), lambda part: build_envelopes(part, "bench"))
        )
        envelopes = [bus.envelope_for(e) for e in events]
        validate.seconds.append(_timed(envelopes, lambda e: registry.decode(e, Tick)))
        structured.seconds.append(_timed(envelopes, encode_structured))
        if wire is not None:
            encode.seconds.append(_timed(envelopes, wire.encode))
            records = [wire.encode(e) for e in envelopes]
            decode.seconds.append(_timed(records, wire.decode))
        url = url_factory()
        pub, rec, sett = await _adapter_round(
            url,
            await topic_factory(),
            envelopes,
            chunk=chunk,
            subscribe_first=subscribe_first,
            timeout=timeout,
        )
        publish.seconds.append(pub)
        receive.seconds.append(rec)
        settle.seconds.append(sett)
        gc.collect()
        total.seconds.append((await e2e(events, None)).cpu)
        gc.collect()
        bare.seconds.append((await e2e(events, lambda u: EmptyChainBus(u, source="bench"))).cpu)
    # build envelope includes serializing the data; the adapter's publish includes
    # encoding and its receive includes decoding where it has a wire codec.
    build.derived = build.per_event(n) - serialize.per_event(n)
    build.how = "measured - serialize"
    if wire is not None:
        publish.derived = publish.per_event(n) - encode.per_event(n)
        publish.how = "measured - encode"
        receive.derived = receive.per_event(n) - decode.per_event(n)
        receive.how = "measured - decode"
    else:
        encode.how = decode.how = "none: envelope object"
    chain.derived = total.per_event(n) - bare.per_event(n)
    chain.how = "end to end: default - empty chain"
    parts = (serialize, build, encode, publish, receive, decode, validate, settle)
    dispatch.derived = bare.per_event(n) - sum(p.per_event(n) for p in parts)
    dispatch.how = "empty-chain end to end - stages"
    return [
        serialize,
        build,
        encode,
        publish,
        receive,
        decode,
        validate,
        chain,
        dispatch,
        settle,
        total,
        structured,
        bare,
    ]


def print_table(title: str, n: int, columns: dict[str, list[Stage]]) -> None:
    """One row per stage, one column (us/event and share of the total) per broker."""
    names = list(columns)
    print(f"\n{title}")
    header = f"{'stage':<32}" + "".join(f" {name + ' us  share':>20}" for name in names)
    print(header + "   how")
    first = columns[names[0]]
    for row, stage in enumerate(first):
        cells = []
        hows = []
        for name in names:
            stages = columns[name]
            total = next(s for s in stages if s.name.startswith("=")).per_event(n)
            value = stages[row].per_event(n) * 1e6
            share = (
                ""
                if stages[row].name.startswith(("=", " ")) or not total
                else (f"{stages[row].per_event(n) / total:.0%}")
            )
            cells.append(f" {value:>12.1f} {share:>6}")
            hows.append(stages[row].how)
        how = hows[0] if len(set(hows)) == 1 else " / ".join(hows)
        print(f"{stage.name:<32}" + "".join(f"{c:>21}" for c in cells) + f"   {how}")


def as_dict(n: int, stages: Sequence[Stage]) -> dict[str, Any]:
    return {s.name.strip(): {"us_per_event": s.per_event(n) * 1e6, "how": s.how} for s in stages}
