"""Wire formats on the memory broker: typed handlers for messages that are not
CloudEvents (plain JSON, FastStream's Redis frame), plain publishing, correlation
across the boundary, and what is dead-lettered with which reason (#21)."""

from __future__ import annotations

import json
import uuid

import pytest

from eventbus import (
    Command,
    ConfigurationError,
    Context,
    Envelope,
    Event,
    EventBus,
    FastStream,
    MemoryAdapter,
    Plain,
    SubscribeOptions,
)
from eventbus._faststream_frame import pack_frame, unpack_frame
from eventbus.adapter import RawMessage
from eventbus.errors import DecodeError
from eventbus.wire import Incoming
from tests.bus_support import Collector, dead_letters, memory_url, run


class Shipped(Event, type="test.wire.shipped", topic="test-wire-shipped"):
    order_id: str
    parcels: int = 1


class Returned(Event, type="test.wire.returned", topic="test-wire-shipped"):
    order_id: str


def test_plain_json_without_headers_reaches_a_typed_handler() -> None:
    """A raw JSON body, no headers at all, is decoded as the subscribed class; its id is
    derived from the broker position (the same in every group), the time is now."""

    async def scenario() -> None:
        url = memory_url()
        seen: Collector[tuple[str, Shipped, Envelope]] = Collector()
        bus = EventBus(url)
        for group in ("a", "b"):

            @bus.subscribe(Shipped, group=group, wire_format="plain")
            async def handle(event: Shipped, ctx: Context) -> None:
                seen.add((ctx.group, event, ctx.envelope))

        async with bus:
            await MemoryAdapter(url).publish_raw(
                Shipped.default_topic(), RawMessage(b'{"order_id": "o-1"}')
            )
            got = await seen.wait_count(2)
        assert {g for g, _, _ in got} == {"a", "b"}
        assert all(event == Shipped(order_id="o-1") for _, event, _ in got)
        ids = {envelope.id for _, _, envelope in got}
        assert len(ids) == 1, f"the position-derived id differs between groups: {ids}"
        envelope = got[0][2]
        assert envelope.type == Shipped.event_type() and envelope.source == "test-wire-shipped"

    run(scenario)


def test_a_cloudevent_is_still_handled_on_a_plain_subscription() -> None:
    """During a migration one topic carries both: CloudEvents keep their attributes."""

    async def scenario() -> None:
        url = memory_url()
        seen: Collector[Envelope] = Collector()
        bus = EventBus(url, wire_format="plain")

        @bus.subscribe(Shipped, group="g")
        async def handle(event: Shipped, ctx: Context) -> None:
            seen.add(ctx.envelope)

        async with bus:
            sent = await bus.publish(Shipped(order_id="ce"), wire_format="cloudevents")
            await MemoryAdapter(url).publish_raw(
                Shipped.default_topic(), RawMessage(b'{"order_id": "p"}')
            )
            first, second = await seen.wait_count(2)
        assert first.id == sent.id and first.source == "eventbus"
        assert json.loads(second.data) == {"order_id": "p"}

    run(scenario)


def test_undecodable_plain_message_is_dead_lettered_with_its_bytes_and_reason() -> None:
    """Not JSON: the DLQ keeps the raw bytes and says which wire format could not read it;
    JSON failing validation: poison (SchemaError), dead-lettered at once."""

    async def scenario() -> None:
        url, topic = memory_url(), Shipped.default_topic()
        bus = EventBus(url)
        handled: Collector[Shipped] = Collector()

        @bus.subscribe(Shipped, group="g", wire_format="plain")
        async def handle(event: Shipped) -> None:
            handled.add(event)

        async with bus:
            adapter = MemoryAdapter(url)
            await adapter.publish_raw(topic, RawMessage(b"\x00not json at all"))
            await adapter.publish_raw(topic, RawMessage(b'{"parcels": "many"}'))
            dead = await dead_letters(url, topic, "g", 2)
        assert handled.items == []
        raw = next(d for d in dead if d.type == "eventbus.undecodable")
        assert raw.data == b"\x00not json at all"
        assert "wire format 'plain'" in raw.extensions["dlqreason"]
        assert "not JSON" in raw.extensions["dlqreason"]
        invalid = next(d for d in dead if d.type != "eventbus.undecodable")
        assert invalid.extensions["dlqreason"].startswith("SchemaError")
        assert invalid.extensions["dlqattempts"] == "1"

    run(scenario)


def test_cloudevents_subscription_says_how_to_accept_plain_messages() -> None:
    async def scenario() -> None:
        url, topic = memory_url(), Shipped.default_topic()
        bus = EventBus(url)

        @bus.subscribe(Shipped, group="g")
        async def handle(event: Shipped) -> None: ...

        async with bus:
            await MemoryAdapter(url).publish_raw(topic, RawMessage(b'{"order_id": "o"}'))
            (dead,) = await dead_letters(url, topic, "g", 1)
        assert "wire_format='plain'" in dead.extensions["dlqreason"]

    run(scenario)


@pytest.mark.parametrize(
    ("wire", "headers", "body"),
    [
        (Plain(type_header="x-type"), {"x-type": b"test.wire.returned"}, {"order_id": "r"}),
        (Plain(type_field="kind"), {}, {"order_id": "r", "kind": "test.wire.returned"}),
    ],
    ids=["header", "field"],
)
def test_the_type_from_a_header_or_field_picks_the_handler(
    wire: Plain, headers: dict[str, bytes], body: dict[str, str]
) -> None:
    async def scenario() -> None:
        url, topic = memory_url(), Shipped.default_topic()
        seen: Collector[object] = Collector()
        bus = EventBus(url)

        @bus.subscribe(Shipped, Returned, group="g", wire_format=wire)
        async def handle(event: Shipped | Returned) -> None:
            seen.add(event)

        async with bus:
            await MemoryAdapter(url).publish_raw(
                topic, RawMessage(json.dumps(body).encode(), headers)
            )
            (event,) = await seen.wait_count(1)
        assert isinstance(event, Returned) and event.order_id == "r"

    run(scenario)


def test_several_classes_and_no_type_is_dead_lettered_saying_what_to_name() -> None:
    async def scenario() -> None:
        url, topic = memory_url(), Shipped.default_topic()
        bus = EventBus(url)

        @bus.subscribe(Shipped, Returned, group="g", wire_format="plain")
        async def handle(event: Shipped | Returned) -> None: ...

        async with bus:
            await MemoryAdapter(url).publish_raw(topic, RawMessage(b'{"order_id": "o"}'))
            (dead,) = await dead_letters(url, topic, "g", 1)
        reason = dead.extensions["dlqreason"]
        assert "cannot tell the event type" in reason and "type_header" in reason

    run(scenario)


def test_topic_binding_names_the_type() -> None:
    wire = Plain(types={"returns": Returned})
    envelope = wire.decode(b'{"order_id": "x"}', {}, Incoming("returns"))
    assert envelope.type == Returned.event_type()


def test_plain_publish_writes_the_data_and_a_few_headers_read_back_as_the_same_event() -> None:
    """``publish(wire_format="plain")``: the body is the event's JSON, the headers say its
    content type, id and correlation (no CloudEvents attribute), the key goes along;
    a plain subscription reads back the same id and correlation."""

    async def scenario() -> None:
        url, topic = memory_url(), Shipped.default_topic()
        raw_adapter = MemoryAdapter(url)
        peek = await raw_adapter.subscribe(topic, SubscribeOptions(group="peek"))
        seen: Collector[Envelope] = Collector()
        bus = EventBus(url)

        @bus.subscribe(Shipped, group="g", wire_format="plain")
        async def handle(event: Shipped, ctx: Context) -> None:
            seen.add(ctx.envelope)

        async with bus:
            sent = await bus.publish(
                Shipped(order_id="o-9", parcels=2),
                wire_format="plain",
                key="o-9",
                correlation_id="flow-1",
            )
            (got,) = await seen.wait_count(1)
            async for delivery in peek:
                assert delivery.envelope is None
                raw, headers = delivery.raw, dict(delivery.raw_headers or {})
                await delivery.ack()
                break
            await peek.close()
        assert json.loads(raw or b"") == {"order_id": "o-9", "parcels": 2}
        assert headers == {
            "content-type": b"application/json",
            "message_id": sent.id.encode(),
            "correlation_id": b"flow-1",
        }
        assert not any(name.startswith("ce") for name in headers)
        assert (got.id, got.correlationid) == (sent.id, "flow-1")
        entry = raw_adapter.broker.topic(topic).log[-1]
        assert entry[1] == "o-9", "the partition key did not go along"

    run(scenario)


def test_correlation_comes_from_faststream_header_else_traceparent() -> None:
    wire = Plain()
    incoming = Incoming("t", default_type="x")
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    by_header = wire.decode(
        b"{}", {"correlation_id": b"c-1", "traceparent": trace.encode()}, incoming
    )
    assert by_header.correlationid == "c-1"
    by_trace = wire.decode(b"{}", {"traceparent": trace.encode()}, incoming)
    assert by_trace.correlationid == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert by_trace.traceparent == trace
    custom = Plain(correlation_headers=("x-request-id",))
    assert custom.decode(b"{}", {"x-request-id": b"r"}, incoming).correlationid == "r"


def test_ids_from_a_header_a_stable_position_or_new() -> None:
    wire = Plain()
    stable = Incoming("t", "t/7", True, "x", "kafka")
    assert wire.decode(b"{}", {"message_id": b"m-1"}, stable).id == "m-1"
    assert wire.decode(b"{}", {}, stable).id == wire.decode(b"{}", {}, stable).id
    other = Incoming("t", "t/8", True, "x", "kafka")
    assert wire.decode(b"{}", {}, other).id != wire.decode(b"{}", {}, stable).id
    unstable = Incoming("t", "t/7", False, "x", "nats+core")
    assert wire.decode(b"{}", {}, unstable).id != wire.decode(b"{}", {}, unstable).id


def test_faststream_frame_matches_faststream_itself() -> None:
    """Our frame reader and writer against FastStream 0.7's own (the peer's code)."""
    binary = pytest.importorskip("faststream.redis.parser.binary")
    theirs = binary.BinaryMessageFormatV1
    ours = pack_frame(b'{"a": 1}', {"correlation_id": "c", "content-type": "application/json"})
    assert theirs.parse(ours) == (
        b'{"a": 1}',
        {"correlation_id": "c", "content-type": "application/json"},
    )
    import asyncio

    frame = asyncio.run(
        theirs.encode(message={"b": 2}, reply_to=None, headers={"x": "y"}, correlation_id="k")
    )
    body, headers = unpack_frame(frame)
    assert json.loads(body) == {"b": 2}
    assert headers["correlation_id"] == "k" and headers["x"] == "y"
    with pytest.raises(DecodeError, match="truncated"):
        unpack_frame(frame[:20])


def test_faststream_format_reads_a_frame_and_writes_one_on_redis_only() -> None:
    wire = FastStream()
    frame = pack_frame(b'{"order_id": "f"}', {"correlation_id": "c-2"})
    incoming = Incoming("t", default_type=Shipped.event_type())
    from_pubsub = wire.decode(frame, {}, incoming)
    from_stream = wire.decode(b"", {"__data__": frame}, incoming)
    for envelope in (from_pubsub, from_stream):
        assert (envelope.data, envelope.correlationid) == (b'{"order_id": "f"}', "c-2")
    envelope = Envelope.create(type="t", source="s", data=b"{}", correlationid="c-3")
    stream = wire.encode(envelope, "redis+streams")
    assert (
        stream.body == b""
        and unpack_frame(stream.headers["__data__"])[1]["correlation_id"] == "c-3"
    )
    pubsub = wire.encode(envelope, "redis")
    assert pubsub.headers == {} and unpack_frame(pubsub.body)[0] == b"{}"
    kafka = wire.encode(envelope, "kafka")
    assert kafka.body == b"{}" and kafka.headers["correlation_id"] == b"c-3"


def test_a_wrong_wire_format_is_refused_naming_the_choices() -> None:
    with pytest.raises(ConfigurationError, match="'plain', 'faststream'"):
        EventBus("memory://", wire_format="json")  # type: ignore[arg-type]
    bus = EventBus("memory://")
    with pytest.raises(ConfigurationError, match="subscribe"):
        bus.subscribe(Shipped, wire_format=object())  # type: ignore[arg-type]


def test_a_user_supplied_wire_format() -> None:
    """Any object with decode() and encode(): here, CSV lines."""

    class Csv:
        name = "csv"

        def decode(self, raw: bytes, headers: object, incoming: Incoming) -> Envelope:
            order_id, parcels = raw.decode().split(",")
            data = json.dumps({"order_id": order_id, "parcels": int(parcels)}).encode()
            return Envelope.create(type=Shipped.event_type(), source="csv", data=data)

        def encode(self, envelope: Envelope, broker: str) -> object:
            raise NotImplementedError

    async def scenario() -> None:
        url = memory_url()
        seen: Collector[Shipped] = Collector()
        bus = EventBus(url)

        @bus.subscribe(Shipped, group="g", wire_format=Csv())  # type: ignore[arg-type]
        async def handle(event: Shipped) -> None:
            seen.add(event)

        async with bus:
            await MemoryAdapter(url).publish_raw(Shipped.default_topic(), RawMessage(b"o-5,3"))
            (event,) = await seen.wait_count(1)
        assert event == Shipped(order_id="o-5", parcels=3)

    run(scenario)


def test_uuid_ids_are_text() -> None:
    envelope = Plain().decode(b"{}", {}, Incoming("t", default_type="x"))
    uuid.UUID(envelope.id)


def test_a_streams_entry_without_body_has_its_fields_as_the_data() -> None:
    """``XADD orders * order_id 7 parcels 2``: no ``body`` field, the fields are the data
    (values as text); elsewhere an empty body is no JSON."""
    fields = {"order_id": b"7", "parcels": b"2"}
    incoming = Incoming("orders", default_type=Shipped.event_type(), broker="redis+streams")
    envelope = Plain().decode(b"", fields, incoming)
    assert Shipped.model_validate_json(envelope.data) == Shipped(order_id="7", parcels=2)
    with pytest.raises(DecodeError, match="not JSON"):
        Plain().decode(b"", fields, Incoming("orders", default_type="x", broker="kafka"))


def test_plain_messages_are_read_before_batching_and_routing() -> None:
    """A batch subscription gets plain messages in one batch (read before batching, not
    one by one as undecodable ones); concurrency > 1 routes them like any other."""

    async def scenario() -> None:
        url, topic = memory_url(), Shipped.default_topic()
        batches: Collector[list[str]] = Collector()
        routed: Collector[str] = Collector()
        bus = EventBus(url)

        @bus.subscribe(Shipped, group="batch", wire_format="plain", batch=3, batch_timeout=1)
        async def in_batches(events: list[Shipped]) -> None:
            batches.add([e.order_id for e in events])

        @bus.subscribe(Shipped, group="lanes", wire_format="plain", concurrency=2)
        async def in_lanes(event: Shipped) -> None:
            routed.add(event.order_id)

        async with bus:
            adapter = MemoryAdapter(url)
            for n in range(3):
                await adapter.publish_raw(topic, RawMessage(b'{"order_id": "b%d"}' % n))
            assert await batches.wait_count(1) == [["b0", "b1", "b2"]]
            assert sorted(await routed.wait_count(3)) == ["b0", "b1", "b2"]

    run(scenario)


def test_key_header_gives_plain_messages_their_partition_key_both_ways() -> None:
    wire = Plain(key_header="x-key")
    incoming = Incoming("t", default_type="x")
    assert wire.decode(b"{}", {"x-key": b"k-1"}, incoming).partitionkey == "k-1"
    assert Plain().decode(b"{}", {"x-key": b"k-1"}, incoming).partitionkey is None
    envelope = Envelope.create(type="x", source="s", data=b"{}", partitionkey="k-2")
    assert wire.encode(envelope, "kafka").headers["x-key"] == b"k-2"


class Quote(Command, type="test.wire.quote", topic="test-wire-quotes"):
    order_id: str


def test_requests_stay_cloudevents_on_a_plain_bus() -> None:
    """A bus whose default is plain still sends commands of ``request()`` and their
    replies as CloudEvents: the reply address is an attribute plain would drop."""

    async def scenario() -> None:
        bus = EventBus(memory_url(), wire_format="plain")

        @bus.subscribe(Quote)
        async def quote(command: Quote) -> int:
            return 42

        async with bus:
            assert await bus.request(Quote(order_id="q"), timeout=5) == 42

    run(scenario)
