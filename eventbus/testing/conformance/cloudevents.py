"""Envelope fidelity: attributes, extensions, payloads and correlation survive the broker."""

from __future__ import annotations

from datetime import UTC, datetime

from eventbus.context import Context
from eventbus.envelope import CORE_ATTRIBUTES, EVENTBUS_EXTENSIONS, Envelope
from eventbus.testing.collector import Collector
from eventbus.testing.conformance._events import Ping, Reply, on_topic, record_envelopes
from eventbus.testing.conformance._support import Case, case


class CloudEventsCases:
    """What a message looks like after the trip through the broker."""

    @case()
    async def test_publish_subscribe_metadata_intact(self, run: Case) -> None:
        """A typed event arrives with every envelope attribute the publisher set: id,
        type, source, time, key, subject, correlation, data version and extensions."""
        event_cls = on_topic(Ping, run.topic())
        received: Collector[tuple[Ping, Envelope]] = Collector("handler")
        consumer = run.bus()

        @consumer.subscribe(event_cls, group=run.group())
        async def handle(event: Ping, ctx: Context) -> None:
            received.add((event, ctx.envelope))

        await consumer.start()
        publisher = await run.publisher()
        sent = await publisher.publish(
            event_cls(seq=7, key="k-1", note="hello"),
            key="k-1",
            subject="orders/7",
            correlation_id="flow-123",
            extensions={"tenant": "acme", "region": "eu1"},
        )
        ((event, envelope),) = await received.wait_count(1)
        assert isinstance(event, event_cls)
        assert event.model_dump() == {"seq": 7, "key": "k-1", "note": "hello"}
        assert envelope == sent, f"envelope changed in transit:\nsent {sent}\ngot  {envelope}"
        assert envelope.extensions == {"tenant": "acme", "region": "eu1"}
        assert envelope.correlationid == "flow-123"
        assert envelope.partitionkey == "k-1"
        assert envelope.source == publisher.source

    @case()
    async def test_cloudevents_attributes_round_trip(self, run: Case) -> None:
        """Every CloudEvents attribute and extension comes back exactly: subject,
        dataschema, datacontenttype, custom extensions, traceparent/tracestate,
        partitionkey, dataversion and the time to the microsecond."""
        topic = run.topic()
        received: Collector[Envelope] = Collector("handler")
        await run.consumer(topic, record_envelopes(received), group=run.group())
        sent = Envelope.create(
            type="com.example.order.shipped",
            source="https://example.com/warehouse/7",
            data=b'{"order": "A-1", "items": [1, 2, 3]}',
            time=datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
            datacontenttype="application/vnd.example.order+json",
            dataschema="https://schemas.example.com/order/3",
            subject="order/A-1",
            dataversion=3,
            correlationid="corr-1",
            causationid="cause-1",
            partitionkey="order-A-1",
            traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            tracestate="vendor=opaque1",
            extensions={"tenant": "acme", "priority": "5", "comexampleflag": "true"},
        )
        await (await run.publisher()).publish_envelopes(topic, [sent])
        (got,) = await received.wait_count(1)
        for name in (*CORE_ATTRIBUTES, *EVENTBUS_EXTENSIONS, "data"):
            if name == "time":
                continue  # compared below, with its own message
            assert getattr(got, name) == getattr(sent, name), f"{name} changed in transit"
        assert got.time == sent.time, f"time lost precision: sent {sent.time}, got {got.time}"
        assert dict(got.extensions) == dict(sent.extensions)
        assert got == sent

    @case()
    async def test_payloads_empty_unicode_binary(self, run: Case) -> None:
        """Empty data, non-ASCII JSON and arbitrary binary bytes (octet-stream) arrive
        byte for byte."""
        topic = run.topic()
        received: Collector[Envelope] = Collector("handler")
        await run.consumer(topic, record_envelopes(received), group=run.group())
        unicode_json = '{"text": "héllo ✓ 日本語 🎉", "quote": "\\"x\\""}'.encode()
        sent = [
            Envelope.create(type="conformance.empty", source="conformance", data=b""),
            Envelope.create(type="conformance.unicode", source="conformance", data=unicode_json),
            Envelope.create(
                type="conformance.binary",
                source="conformance",
                data=bytes(range(256)) * 4,
                datacontenttype="application/octet-stream",
            ),
        ]
        await (await run.publisher()).publish_envelopes(topic, sent)
        got = {e.id: e for e in await received.wait_count(len(sent))}
        for envelope in sent:
            assert got[envelope.id].data == envelope.data, f"{envelope.type} data changed"
            assert got[envelope.id].datacontenttype == envelope.datacontenttype

    @case()
    async def test_correlation_and_causation_across_hop(self, run: Case) -> None:
        """A handler's publishes carry the flow's correlation id and name the handled
        event as their cause, both through ``ctx.publish`` and through a plain
        ``bus.publish`` inside the handler; a third hop keeps the root's correlation."""
        first, second = on_topic(Ping, run.topic()), on_topic(Reply, run.topic())
        replies: Collector[Envelope] = Collector("replies")
        bus = run.bus()

        @bus.subscribe(first, group=run.group())
        async def relay(event: Ping, ctx: Context) -> None:
            if event.note == "ctx":
                await ctx.publish(second(seq=event.seq))
            else:
                await bus.publish(second(seq=event.seq))  # inherits through a contextvar

        @bus.subscribe(second, group=run.group())
        async def on_reply(event: Reply, ctx: Context) -> None:
            replies.add(ctx.envelope)
            if event.seq < 100:
                await ctx.publish(second(seq=event.seq + 100))

        await bus.start()
        publisher = await run.publisher()
        roots = {
            "ctx": await publisher.publish(first(seq=1, note="ctx")),
            "bus": await publisher.publish(first(seq=2, note="bus")),
        }
        got = await replies.wait_count(4)
        by_seq = {Reply.model_validate_json(e.data).seq: e for e in got}
        for seq, root in ((1, roots["ctx"]), (2, roots["bus"])):
            child, grandchild = by_seq[seq], by_seq[seq + 100]
            assert root.correlationid == root.id, "a root event correlates to itself"
            assert child.correlationid == root.id
            assert child.causationid == root.id
            assert grandchild.correlationid == root.id, "correlation survives two hops"
            assert grandchild.causationid == child.id
