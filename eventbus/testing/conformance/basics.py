"""Publishing and subscribing: delivery, isolation, batches, history, health, URLs."""

from __future__ import annotations

import asyncio

import pytest

from eventbus.context import Context
from eventbus.errors import InvalidURLError, UnknownSchemeError
from eventbus.events import Message
from eventbus.registry_adapters import ENTRY_POINT_GROUP, adapter_from_url
from eventbus.testing.collector import PATIENCE, Collector
from eventbus.testing.conformance._events import Ping, on_topic, record_events
from eventbus.testing.conformance._support import QUIET, WAIT, Capability, Case, case, requires

REFUSAL = 1.5
"""Seconds the health case keeps the broker refusing connections."""


def _seqs(items: list[Ping]) -> list[int]:
    return sorted(p.seq for p in items)


class BasicsCases:
    """The everyday promises: what is published arrives, where it should and only there."""

    @case()
    async def test_topic_isolation(self, run: Case) -> None:
        """Messages published on topic A never reach subscribers of topic B (watched for a
        short bounded grace period after A's messages have all arrived)."""
        topic_a, topic_b = on_topic(Ping, run.topic()), on_topic(Ping, run.topic())
        got_a: Collector[Ping] = Collector("topic A")
        got_b: Collector[Ping] = Collector("topic B")
        bus = run.bus()
        group = run.group()

        @bus.subscribe(topic_a, group=group)
        async def on_a(event: Ping) -> None:
            got_a.add(event)

        @bus.subscribe(topic_b, group=group)
        async def on_b(event: Ping) -> None:
            got_b.add(event)

        await bus.start()
        count = run.count(20)
        await bus.publish_many([topic_a(seq=i) for i in range(count)])
        await bus.publish(topic_b(seq=-1))
        await got_a.wait_count(count)
        await got_b.wait_count(1)
        await asyncio.sleep(QUIET)  # give a leak the chance to show
        assert _seqs(got_a.items) == list(range(count))
        assert [p.seq for p in got_b.items] == [-1], "topic B received topic A's messages"

    @case()
    async def test_bulk_publish_all_arrive(self, run: Case) -> None:
        """``publish_many`` of N events confirms them all and every one arrives once."""
        event_cls = on_topic(Ping, run.topic())
        got: Collector[Ping] = Collector("handler")
        await run.consumer(event_cls, record_events(got), group=run.group(), concurrency=4)
        count = run.count(300)
        publisher = await run.publisher()
        envelopes = await publisher.publish_many([event_cls(seq=i) for i in range(count)])
        assert len({e.id for e in envelopes}) == count
        await got.wait_count(count)
        assert _seqs(got.items) == list(range(count))

    @case()
    async def test_concurrent_subscribe(self, run: Case) -> None:
        """Many subscribers (each its own group) started at the same moment all get
        every message published afterwards. Without fan-out (SQS's queue topology: one
        queue every group shares) they compete instead, so together they get every one."""
        event_cls = on_topic(Ping, run.topic())
        subscribers = run.count(10, minimum=3)
        together = None if run.caps.fanout else Collector[Ping]("the subscribers together")
        inboxes: list[Collector[Ping]] = [] if together is None else [together]
        buses = []
        for index in range(subscribers):
            bus = run.bus()
            inbox = together if together is not None else Collector[Ping](f"subscriber {index}")
            if together is None:
                inboxes.append(inbox)
            bus.subscribe(event_cls, group=run.group())(record_events(inbox))
            buses.append(bus)
        await asyncio.gather(*(bus.start() for bus in buses))
        count = run.count(20)
        await (await run.publisher()).publish_many([event_cls(seq=i) for i in range(count)])
        for inbox in inboxes:
            await inbox.wait_count(count)
            assert _seqs(inbox.items) == list(range(count))

    @case()
    async def test_concurrent_multiple_topics(self, run: Case) -> None:
        """Publishing to many topics at once delivers each topic's messages, and only
        those, to that topic's subscriber."""
        topics = [on_topic(Ping, run.topic()) for _ in range(run.count(8, minimum=3))]
        inboxes: list[Collector[Ping]] = [Collector(cls.default_topic()) for cls in topics]
        bus = run.bus()
        for cls, inbox in zip(topics, inboxes, strict=True):
            bus.subscribe(cls, group=run.group())(record_events(inbox))

        await bus.start()
        count = run.count(15)
        publisher = await run.publisher()

        async def publish_topic(number: int, cls: type[Ping]) -> None:
            for i in range(count):
                await publisher.publish(cls(seq=number * 1000 + i))

        await asyncio.gather(*(publish_topic(n, cls) for n, cls in enumerate(topics)))
        for number, inbox in enumerate(inboxes):
            await inbox.wait_count(count)
            assert _seqs(inbox.items) == [number * 1000 + i for i in range(count)]

    @case()
    async def test_subscribed_when_start_returns(self, run: Case) -> None:
        """When ``start()`` returns, every subscription of the bus is on the broker: an
        event published at once, from another connection (a publisher already started),
        reaches its handler, on a broker that keeps nothing for a subscriber not there yet
        too. Several topics, so that several subscriptions are set up in one start."""
        publisher = await run.publisher()
        topics = [on_topic(Ping, run.topic()) for _ in range(run.count(6, minimum=3))]
        got: Collector[Ping] = Collector("the handlers")
        bus = run.bus()
        for cls in topics:
            bus.subscribe(cls, group=run.group())(record_events(got))
        await bus.start()
        for number, cls in enumerate(topics):
            await publisher.publish(cls(seq=number))
        await got.wait_count(len(topics))
        assert _seqs(got.items) == list(range(len(topics)))

    @case()
    async def test_publisher_close_flushes(self, run: Case) -> None:
        """Publishes confirmed just before the publishing bus stops are not lost: a
        subscriber on another bus receives every one."""
        event_cls = on_topic(Ping, run.topic())
        got: Collector[Ping] = Collector("handler")
        await run.consumer(event_cls, record_events(got), group=run.group())
        publisher = await run.publisher()
        count = run.count(50)
        await asyncio.gather(*(publisher.publish(event_cls(seq=i)) for i in range(count)))
        await publisher.stop()
        await got.wait_count(count)
        assert _seqs(got.items) == list(range(count))

    @case(
        requires(Capability.replay, "a new group must be able to start from the earliest message")
    )
    async def test_new_subscriber_receives_history(self, run: Case) -> None:
        """A group created after messages were published, with ``start_from="earliest"``,
        receives them all."""
        event_cls = on_topic(Ping, run.topic())
        count = run.count(10)
        await (await run.publisher()).publish_many([event_cls(seq=i) for i in range(count)])
        got: Collector[Ping] = Collector("late subscriber")
        await run.consumer(event_cls, record_events(got), group=run.group(), start_from="earliest")
        await got.wait_count(count)
        assert _seqs(got.items) == list(range(count))

    @case()
    async def test_health_ok(self, run: Case) -> None:
        """A connected adapter reports itself healthy."""
        adapter = await run.connected_adapter()
        report = await adapter.health()
        assert report.ok, f"health() says not ok: {report.detail}"

    @case(requires(Capability.fault_hooks, "the case makes the broker refuse connections"))
    async def test_health_follows_the_connection(self, run: Case) -> None:
        """Health is ok when connected, not ok (with a reason) while the broker refuses
        connections, and ok again once it accepts them."""
        assert run.target.faults is not None and run.target.faulty_url is not None
        adapter = await run.connected_adapter(run.target.faulty_url)
        assert (await adapter.health()).ok, "not healthy before the fault"
        refusal = REFUSAL * PATIENCE
        loop = asyncio.get_running_loop()
        ends = loop.time() + refusal
        await run.target.faults.refuse_connections(refusal)
        report = await adapter.health()
        assert loop.time() < ends, "health() took longer than the refusal; nothing was shown"
        assert not report.ok, "health() says ok while the broker refuses connections"
        assert report.detail, "a failed health report must say why"
        await asyncio.sleep(max(0.0, ends - loop.time()))  # the refusal's own end
        for _ in range(int(WAIT / 0.1)):
            report = await adapter.health()
            if report.ok:
                break
            await asyncio.sleep(0.1)  # the client may back off before reconnecting
        assert report.ok, f"still not healthy after the refusal ended: {report.detail}"

    @case()
    async def test_unknown_scheme_names_package(self, run: Case) -> None:
        """An unknown URL scheme fails with UnknownSchemeError that says how to get an
        adapter; a URL without a scheme fails with InvalidURLError."""
        with pytest.raises(UnknownSchemeError) as unknown:
            adapter_from_url("nosuchbroker://localhost:1234")
        assert "nosuchbroker" in str(unknown.value)
        assert ENTRY_POINT_GROUP in str(unknown.value) or "pip install" in str(unknown.value)
        with pytest.raises(InvalidURLError):
            adapter_from_url("broker-host-without-scheme")

    @case()
    async def test_unknown_url_option_rejected(self, run: Case) -> None:
        """A URL option the adapter does not know fails with InvalidURLError naming it
        (when the adapter is built or when it connects), instead of being ignored."""
        separator = "&" if "?" in run.target.url else "?"
        url = f"{run.target.url}{separator}nosuchoption=1"
        with pytest.raises(InvalidURLError) as error:
            adapter = run.adapter(url)
            await adapter.connect()
        assert "nosuchoption" in str(error.value)

    @case()
    async def test_handler_gets_typed_event_and_context(self, run: Case) -> None:
        """A handler gets the typed, validated event plus a context naming the topic,
        the group and the attempt number."""
        event_cls = on_topic(Ping, run.topic())
        group = run.group()
        got: Collector[tuple[Message, str, str, int]] = Collector("handler")
        consumer = run.bus()

        @consumer.subscribe(event_cls, group=group)
        async def handle(event: Ping, ctx: Context) -> None:
            got.add((event, ctx.topic, ctx.group, ctx.attempt))

        await consumer.start()
        await (await run.publisher()).publish(event_cls(seq=1, note="typed"))
        ((event, topic, seen_group, attempt),) = await got.wait_count(1)
        assert isinstance(event, Ping) and event.note == "typed"
        assert (topic, seen_group, attempt) == (event_cls.default_topic(), group, 1)
