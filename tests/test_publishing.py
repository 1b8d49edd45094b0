"""Publishing: publish middleware around every publish, partial multi-topic batches,
the parent of what a handler publishes (inherit, new flow, explicit), and publish_many
of one class (one topic, the common case), whose shorter path must still name the
right indexes when it fails."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from eventbus import (
    BatchPublishError,
    BrokerConnectionError,
    Command,
    Context,
    Envelope,
    Event,
    EventBus,
    MemoryAdapter,
    MessageTooLargeError,
    PublishError,
)
from tests.bus_support import Collector, memory_url, read_topic, run


class Pinged(Event, type="test.publishing.pinged", topic="test-publishing-pings"):
    n: int


class Ponged(Event, type="test.publishing.ponged", topic="test-publishing-pongs"):
    n: int


class Ring(Command, type="test.publishing.ring", topic="test-publishing-rings"):
    n: int


def test_publish_middleware_runs_around_every_publish_and_may_change_envelopes() -> None:
    async def scenario() -> None:
        calls: list[tuple[str, int]] = []

        async def stamp(topic: str, envelopes: Sequence[Envelope], call_next: Any) -> None:
            calls.append((topic, len(envelopes)))
            await call_next(
                topic, [e.evolve(extensions={**e.extensions, "tenant": "a"}) for e in envelopes]
            )

        bus = EventBus(memory_url(), publish_middleware=[stamp])
        received: Collector[Envelope] = Collector()

        @bus.subscribe(Pinged, group="g")
        async def reply(event: Pinged, ctx: Context) -> None:
            await ctx.publish(Ponged(n=event.n))
            await ctx.send(Ring(n=event.n))

        @bus.subscribe(Ponged, Ring, group="g2")
        async def collect(event: Event, ctx: Context) -> None:
            received.add(ctx.envelope)

        async with bus:
            first = await bus.publish(Pinged(n=1))
            many = await bus.publish_many([Ponged(n=2), Ring(n=3)])
            await bus.send(Ring(n=4))
            await received.wait_count(5)
        assert first.extensions == {"tenant": "a"}
        assert [e.extensions for e in many] == [{"tenant": "a"}, {"tenant": "a"}]
        assert {e.extensions["tenant"] for e in received.items} == {"a"}
        pings, pongs, rings = (f"test-publishing-{name}" for name in ("pings", "pongs", "rings"))
        # bus.publish, publish_many (one call per topic), send, then ctx.publish and ctx.send
        assert sorted(calls) == sorted(
            [(pings, 1), (pongs, 1), (rings, 1), (rings, 1), (pongs, 1), (rings, 1)]
        )

    run(scenario)


def test_several_publish_middlewares_run_first_outermost_each_once() -> None:
    """The first of ``publish_middleware`` is outermost (the bus calls it directly), the
    last innermost; each runs once per publish and sees what the one outside it passed
    on, and the broker gets what the innermost passed on."""

    async def scenario() -> None:
        calls: list[str] = []

        def layer(name: str) -> Any:
            async def step(topic: str, envelopes: Sequence[Envelope], call_next: Any) -> None:
                seen = ",".join(e.extensions.get("path", "") for e in envelopes)
                calls.append(f"{name} in {seen or '-'}")
                await call_next(
                    topic,
                    [
                        e.evolve(extensions={"path": e.extensions.get("path", "") + name})
                        for e in envelopes
                    ],
                )
                calls.append(f"{name} out")

            return step

        bus = EventBus(memory_url(), publish_middleware=[layer("a"), layer("b"), layer("c")])
        received: Collector[Envelope] = Collector()

        @bus.subscribe(Pinged, group="g")
        async def collect(event: Pinged, ctx: Context) -> None:
            received.add(ctx.envelope)

        async with bus:
            sent = await bus.publish(Pinged(n=1))
            (got,) = await received.wait_count(1)
        assert calls == ["a in -", "b in a", "c in ab", "c out", "b out", "a out"]
        assert sent.extensions == got.extensions == {"path": "abc"}

    run(scenario)


def test_publish_middleware_may_keep_messages_instead_of_sending_them() -> None:
    async def scenario() -> None:
        outbox: list[Envelope] = []

        async def keep(topic: str, envelopes: Sequence[Envelope], call_next: Any) -> None:
            outbox.extend(envelopes)

        url = memory_url()
        bus = EventBus(url, publish_middleware=[keep])
        async with bus:
            sent = await bus.publish(Pinged(n=1))
        assert outbox == [sent]
        assert "test-publishing-pings" not in MemoryAdapter(url).broker.topics

    run(scenario)


class HalfDown(MemoryAdapter):
    """Publishing to the pongs topic fails as if its partition leader were unreachable."""

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        if topic == "test-publishing-pongs":
            raise BrokerConnectionError("connection to the pongs partition leader refused")
        await super().publish(topic, envelopes)


def test_publish_many_reports_a_partial_multi_topic_batch_as_a_batch_error() -> None:
    async def scenario() -> None:
        url = memory_url()
        bus = EventBus(HalfDown(url), publish_timeout=0.1)
        async with bus:
            with pytest.raises(BatchPublishError) as info:
                await bus.publish_many([Pinged(n=1), Ponged(n=2), Pinged(n=3)])
        error = info.value
        assert sorted(error.failures) == [1]
        assert isinstance(error.failures[1], BrokerConnectionError)
        assert list(error.succeeded) == [0, 2]
        on_pings = await read_topic(url, "test-publishing-pings", 2)
        assert [e.id for e in on_pings] == [error.envelopes[0].id, error.envelopes[2].id]
        assert error.envelopes[1].id in str(error)  # the failed id is named

    run(scenario)


def test_publish_with_parent_none_inside_a_handler_starts_a_new_flow() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url())
        published: Collector[tuple[str, Envelope]] = Collector()

        @bus.subscribe(Pinged, group="g")
        async def handle(event: Pinged, ctx: Context) -> None:
            published.add(("bus, inherited", await bus.publish(Ponged(n=1))))
            published.add(("bus, new flow", await bus.publish(Ponged(n=2), parent=None)))
            published.add(("ctx, new flow", await ctx.publish(Ponged(n=3), parent=None)))
            other = Envelope.create(type="x", source="s", correlationid="other-flow")
            published.add(("ctx, explicit", await ctx.publish(Ponged(n=4), parent=other)))
            published.add(("ctx send, new flow", await ctx.send(Ring(n=5), parent=None)))

        async with bus:
            cause = await bus.publish(Pinged(n=0))
            got = dict(await published.wait_count(5))
        inherited = got["bus, inherited"]
        assert inherited.causationid == cause.id and inherited.correlationid == cause.id
        for name in ("bus, new flow", "ctx, new flow", "ctx send, new flow"):
            fresh = got[name]
            assert fresh.causationid is None, name
            assert fresh.correlationid == fresh.id, name
        explicit = got["ctx, explicit"]
        assert explicit.correlationid == "other-flow" and explicit.causationid != cause.id

    run(scenario)


def test_a_batch_builds_one_envelope_per_message_each_its_own_flow_and_extensions() -> None:
    from eventbus.publishing import build_envelopes

    envelopes = build_envelopes(
        [Ponged(n=1), Ring(n=2), Ponged(n=3)],
        "svc",
        parent=None,
        extensions={"tenant": "acme"},
        key="k",
    )
    assert [e.type for e in envelopes] == [
        Ponged.event_type(),
        Ring.event_type(),
        Ponged.event_type(),
    ]
    assert [e.data for e in envelopes] == [b'{"n":1}', b'{"n":2}', b'{"n":3}']
    assert all(e.correlationid == e.id and e.causationid is None for e in envelopes)
    assert all(e.partitionkey == "k" and e.source == "svc" for e in envelopes)
    assert envelopes[0].extensions == {"tenant": "acme"}
    assert envelopes[0].extensions is not envelopes[1].extensions
    assert len({e.time for e in envelopes}) == 1 and type(envelopes[0]) is Envelope


# -- publish_many of one class: the one-topic path ---------------------------------------


class Shipped(Event, type="test.one-topic.shipped", topic="test-one-topic-shipped"):
    parcel: str


class _RefusesBad(MemoryAdapter):
    """Confirms every message of a batch except those whose parcel is "bad"."""

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        bad: dict[int, Exception] = {
            i: PublishError("not confirmed")
            for i, e in enumerate(envelopes)
            if json.loads(e.data)["parcel"] == "bad"
        }
        await super().publish(topic, [e for i, e in enumerate(envelopes) if i not in bad])
        if bad:
            raise BatchPublishError("partial", bad, len(envelopes))


def test_one_topic_batch_refused_whole_names_every_index() -> None:
    async def scenario() -> None:
        bus = EventBus(f"{memory_url()}?max_message_bytes=400")
        async with bus:
            with pytest.raises(BatchPublishError) as info:
                await bus.publish_many(
                    [Shipped(parcel="a"), Shipped(parcel="x" * 500), Shipped(parcel="b")]
                )
        error = info.value
        assert set(error.failures) == {0, 1, 2}
        assert list(error.succeeded) == []
        assert all(isinstance(e, MessageTooLargeError) for e in error.failures.values())
        assert len({e.id for e in error.envelopes}) == 3  # what to republish, same ids

    run(scenario)


def test_one_topic_batch_partly_confirmed_names_the_failed_indexes() -> None:
    async def scenario() -> None:
        url = memory_url()
        bus = EventBus(_RefusesBad(url))
        async with bus:
            with pytest.raises(BatchPublishError) as info:
                await bus.publish_many(
                    [
                        Shipped(parcel="ok"),
                        Shipped(parcel="bad"),
                        Shipped(parcel="ok 2"),
                        Shipped(parcel="bad"),
                    ]
                )
        stored = await read_topic(url, "test-one-topic-shipped", 2)
        assert set(info.value.failures) == {1, 3}
        assert list(info.value.succeeded) == [0, 2]
        sent = [info.value.envelopes[i].id for i in (0, 2)]
        assert [e.id for e in stored] == sent

    run(scenario)


def test_one_topic_batch_returns_the_envelopes_as_sent() -> None:
    async def scenario() -> None:
        async def stamp(topic: str, envelopes: Sequence[Envelope], call_next: Any) -> None:
            await call_next(topic, [e.evolve(subject="stamped") for e in envelopes])

        bus = EventBus(memory_url(), publish_middleware=[stamp])
        async with bus:
            sent = await bus.publish_many([Shipped(parcel="a"), Shipped(parcel="b")])
        assert [e.subject for e in sent] == ["stamped", "stamped"]

    run(scenario)


def test_a_publish_refused_by_a_lost_connection_is_tried_again_after_growing_delays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each failed attempt waits the publish backoff's next delay (0.05s, doubling,
    +-10%), and a publish that goes through at once waits none."""
    from eventbus import publishing

    waited: list[float] = []

    async def no_wait(delay: float) -> None:
        waited.append(delay)

    class Flaky(MemoryAdapter):
        failures = 3

        async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
            if self.failures:
                self.failures -= 1
                raise BrokerConnectionError("connection lost (injected)")
            await super().publish(topic, envelopes)

    async def scenario() -> None:
        adapter = Flaky(memory_url())
        envelope = Envelope.create(type="t", source="s", data=b"{}")
        monkeypatch.setattr(publishing.asyncio, "sleep", no_wait)
        await publishing.publish_with_retry(adapter, "t", [envelope], timeout=30.0)
        assert len(waited) == 3
        for delay, expected in zip(waited, (0.05, 0.1, 0.2), strict=True):
            assert expected * 0.9 <= delay <= expected * 1.1, waited
        waited.clear()
        await publishing.publish_with_retry(adapter, "t", [envelope], timeout=30.0)
        assert waited == []
        await adapter.close()

    run(scenario)
