"""Payload formats (#21) on the memory broker: JSON stays the default, byte for byte;
msgpack, Avro and protobuf round-trip every field type the guide's events use, in
binary and structured mode; a consumer decodes by content type, so one topic carries
two formats; a bus default and a class's own choice; what is wrong says so."""

from __future__ import annotations

import enum
from decimal import Decimal
from typing import Any

import pytest

from eventbus import Context, Envelope, Event, EventBus
from eventbus.envelope import JSON
from eventbus.errors import ConfigurationError, SchemaError
from eventbus.events import registry
from eventbus.payloads.avro import SCHEMA_PREFIX as AVRO_SCHEMA
from eventbus.payloads.protobuf import ProtobufFormat
from tests.bus_support import Collector, dead_letters, memory_url, run
from tests.payloads.events import FORMATS, AllTypes, JsonAll, MsgPackAll, proto_module, sample

CONTENT_TYPES = {
    "json": JSON,
    "msgpack": "application/msgpack",
    "avro": "application/avro",
    "protobuf": "application/protobuf",
}
MODES = ("binary", "structured")


async def round_trip(
    url: str, messages: list[AllTypes], *, many: bool = False, **bus: object
) -> tuple[list[AllTypes], list[Envelope]]:
    """Publish ``messages`` on ``url`` and return what a subscriber decoded, with the
    envelopes it got."""
    seen: Collector[tuple[AllTypes, Envelope]] = Collector()
    consumer = EventBus(url)

    @consumer.subscribe(type(messages[0]), group="g")
    async def handle(event: AllTypes, ctx: Context) -> None:
        seen.add((event, ctx.envelope))

    async with consumer, EventBus(url, **bus) as producer:  # type: ignore[arg-type]
        if many:
            await producer.publish_many(messages)
        else:
            for message in messages:
                await producer.publish(message)
        got = await seen.wait_count(len(messages))
    return [event for event, _ in got], [envelope for _, envelope in got]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(FORMATS))
def test_every_field_type_round_trips_in_each_format_and_mode(name: str, mode: str) -> None:
    cls = FORMATS[name]
    sent = [sample(cls, 0), sample(cls, 1, note=None, retries=3, gift=sample(cls).first)]

    async def scenario() -> None:
        for many in (False, True):
            got, envelopes = await round_trip(f"{memory_url()}?mode={mode}", sent, many=many)
            assert got == sent, f"{name} in {mode} mode (publish_many={many})"
            assert [str(e.total) for e in got] == [str(e.total) for e in sent]  # every digit
            assert {e.datacontenttype for e in envelopes} == {CONTENT_TYPES[name]}

    run(scenario)


def test_json_stays_the_default_byte_for_byte() -> None:
    message = sample(JsonAll)
    for bus in (EventBus("memory://"), EventBus("memory://", payload_format="json")):
        envelope = bus.envelope_for(message)
        assert envelope.data == message.__pydantic_serializer__.to_json(message)
        assert (envelope.datacontenttype, envelope.dataschema) == (JSON, None)


def test_the_schema_is_named_in_dataschema() -> None:
    bus = EventBus("memory://")
    avro = bus.envelope_for(sample(FORMATS["avro"]))
    assert avro.dataschema is not None and avro.dataschema.startswith(AVRO_SCHEMA)
    proto = bus.envelope_for(sample(FORMATS["protobuf"]))
    assert proto.dataschema == "urn:protobuf:eventbus.tests.v1.AllTypes"
    assert bus.envelope_for(sample(MsgPackAll)).dataschema is None


class Tally(Event, type="payloads.tally", topic="payloads-tally"):
    count: int


class TallyJson(Event, type="payloads.tally-json", payload_format="json"):
    count: int


def test_a_bus_default_applies_to_classes_that_name_none() -> None:
    bus = EventBus("memory://", payload_format="msgpack")
    assert bus.envelope_for(Tally(count=1)).datacontenttype == "application/msgpack"
    assert bus.envelope_for(TallyJson(count=1)).datacontenttype == JSON  # the class's own wins
    assert bus.envelope_for(sample(FORMATS["avro"])).datacontenttype == "application/avro"
    mixed = [Tally(count=1), TallyJson(count=2)]
    from eventbus.publishing import build_envelopes

    kinds = [e.datacontenttype for e in build_envelopes(mixed, "t", payload_format="avro")]
    assert kinds == ["application/avro", JSON]


def test_one_topic_carries_two_formats_while_producers_migrate() -> None:
    async def scenario() -> None:
        url = memory_url()
        seen: Collector[tuple[Tally, str | None]] = Collector()
        consumer = EventBus(url)

        @consumer.subscribe(Tally, group="g")
        async def handle(event: Tally, ctx: Context) -> None:
            seen.add((event, ctx.envelope.datacontenttype))

        async with (
            consumer,
            EventBus(url) as old,
            EventBus(url, payload_format="msgpack") as new,
            EventBus(url, payload_format="avro") as newer,
        ):
            await old.publish(Tally(count=1))
            await new.publish(Tally(count=2))
            await newer.publish(Tally(count=3))
            await old.publish(Tally(count=4))
            got = await seen.wait_count(4)
        assert sorted((e.count, ct) for e, ct in got) == [
            (1, JSON),
            (2, "application/msgpack"),
            (3, "application/avro"),
            (4, JSON),
        ]

    run(scenario)


def decode(data: bytes, content_type: str, cls: type[Event] = Tally, **more: object) -> object:
    envelope = Envelope.create(
        type=cls.event_type(), source="t", data=data, datacontenttype=content_type, **more
    )
    return registry.decode(envelope)


def test_unreadable_data_is_a_schema_error_naming_the_format() -> None:
    with pytest.raises(SchemaError, match=r"not MessagePack"):
        decode(b"\xc1", "application/msgpack")
    with pytest.raises(SchemaError, match=r"without dataschema"):
        decode(b"\x02", "application/avro")
    with pytest.raises(SchemaError, match=r"unknown Avro writer schema .*register_schema"):
        decode(b"\x02", "application/avro", dataschema=AVRO_SCHEMA + "0000000000000000")
    with pytest.raises(SchemaError, match=r"'application/xml', which no payload format"):
        decode(b"<count>1</count>", "application/xml")
    with pytest.raises(SchemaError, match=r"failed validation"):
        decode(b"\x81\xa5count\xa3one", "application/msgpack")  # {"count": "one"}
    assert decode(b"\x81\xa5count\x07", "application/x-msgpack; v=1") == Tally(count=7)


def test_undecodable_data_is_dead_lettered_with_its_reason() -> None:
    async def scenario() -> None:
        url = memory_url()
        bus = EventBus(url)

        @bus.subscribe(Tally, group="g")
        async def handle(event: Tally) -> None:
            raise AssertionError("not reached")

        async with bus:
            bad = Envelope.create(
                type=Tally.event_type(),
                source="t",
                data=b"\xc1",
                datacontenttype="application/msgpack",
            )
            await bus.publish_envelopes(Tally.default_topic(), [bad])
            (dead,) = await dead_letters(url, Tally.default_topic(), "g", 1)
        assert dead.id == bad.id and dead.data == bad.data
        assert "MessagePack" in str(dead.extensions)

    run(scenario)


def test_what_cannot_be_a_format_says_what_can() -> None:
    with pytest.raises(ConfigurationError, match=r"payload_format='xml' .*'msgpack'"):

        class Bad(Event, type="payloads.bad", payload_format="xml"):  # type: ignore[call-arg]
            n: int

    bound = ProtobufFormat(proto_module().Line)
    with pytest.raises(ConfigurationError, match=r"bound to one message class"):
        EventBus("memory://", payload_format=bound)
    with pytest.raises(ConfigurationError, match=r"generated message class"):
        ProtobufFormat(Tally)


def test_a_model_field_the_proto_lacks_fails_the_publish_naming_it() -> None:
    class Wider(Event, type="payloads.wider", payload_format=ProtobufFormat(proto_module().Line)):
        sku: str
        quantity: int
        unit_price_cents: int
        colour: str

    bus = EventBus("memory://")
    with pytest.raises(ConfigurationError, match=r"Wider does not fit .*colour"):
        bus.envelope_for(Wider(sku="s", quantity=1, unit_price_cents=2, colour="red"))


class Colour(enum.Enum):  # no str mixin: Avro gets its values
    red = "red"
    dark_blue = "dark-blue"  # not an Avro name: the enum travels as a string


class Level(enum.Enum):
    low = 1
    high = 2


class Priced(Event, type="payloads.priced", payload_format="avro"):
    colour: Colour
    shade: Colour
    level: Level
    prices: list[Decimal]
    by_sku: dict[str, Decimal]
    maybe: Decimal | None
    nested: list[dict[str, Decimal]]


def test_avro_writes_plain_enums_and_decimals_wherever_they_sit() -> None:
    sent = Priced(
        colour=Colour.red,
        shade=Colour.dark_blue,
        level=Level.high,
        prices=[Decimal("1.10"), Decimal("0.000000000000000000001")],
        by_sku={"a": Decimal("-3.50")},
        maybe=Decimal("7.0"),
        nested=[{"x": Decimal("1E+3")}],
    )
    envelope = EventBus("memory://").envelope_for(sent)
    got = registry.decode(envelope)
    assert got == sent and repr(got) == repr(sent)  # every digit, as sent


def test_a_field_avro_cannot_type_fails_the_publish_naming_it() -> None:
    class Loose(Event, type="payloads.loose", payload_format="avro"):
        extra: dict[str, Any]

    with pytest.raises(ConfigurationError, match=r"Loose\.extra: typing\.Any has no Avro type"):
        EventBus("memory://").envelope_for(Loose(extra={"a": 1}))


def test_the_asyncapi_document_gives_each_message_its_content_type() -> None:
    from eventbus.asyncapi import asyncapi_document

    bus = EventBus("memory://", payload_format="msgpack")
    bus.publishes(Tally, TallyJson, FORMATS["avro"], FORMATS["protobuf"])
    messages = asyncapi_document(bus)["components"]["messages"]
    assert sorted(m["contentType"] for m in messages.values()) == [
        "application/avro",
        "application/json",
        "application/msgpack",
        "application/protobuf",
    ]
