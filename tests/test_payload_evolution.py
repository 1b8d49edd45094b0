"""Schema evolution across payload formats (#21): the registry's type+version and its
upcasters work whatever the format. An Avro-encoded event evolves through two versions
(v1 -> v2 -> v3); the reader finds each writer's schema by the fingerprint in
``dataschema``, among the schemas it knows, and says how to make one known."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

import eventbus.payloads
from eventbus import Envelope, Event, EventBus
from eventbus.errors import SchemaError
from eventbus.events import Registry
from eventbus.payloads.avro import register_schema, schema_of
from tests.bus_support import Collector, memory_url, run

TYPE = "payloads.evolving-order"


class PlacedV1(Event, type=TYPE, version=1, register=False, payload_format="avro"):
    id: str
    cents: int


class PlacedV2(Event, type=TYPE, version=2, register=False, payload_format="avro"):
    order_id: str
    amount_cents: int


class PlacedV3(Event, type=TYPE, version=3, register=False, payload_format="avro"):
    order_id: str
    amount: Decimal
    currency: str


def reader_registry() -> Registry:
    """What a service on version 3 runs: the v3 class and the two upcasters."""
    registry = Registry()
    registry.register(PlacedV3)

    @registry.upcaster(TYPE, from_version=1)
    def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": data["id"], "amount_cents": data["cents"]}

    @registry.upcaster(TYPE, from_version=2)
    def _v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
        cents = data.pop("amount_cents")
        return {**data, "amount": Decimal(cents) / 100, "currency": "EUR"}

    return registry


def written() -> list[Envelope]:
    """What producers of each version put on the topic, in Avro."""
    bus = EventBus("memory://")
    return [
        bus.envelope_for(PlacedV1(id="o-1", cents=1250)),
        bus.envelope_for(PlacedV2(order_id="o-2", amount_cents=99)),
        bus.envelope_for(PlacedV3(order_id="o-3", amount=Decimal("7.10"), currency="SEK")),
    ]


EXPECTED = [
    PlacedV3(order_id="o-1", amount=Decimal("12.50"), currency="EUR"),
    PlacedV3(order_id="o-2", amount=Decimal("0.99"), currency="EUR"),
    PlacedV3(order_id="o-3", amount=Decimal("7.10"), currency="SEK"),
]


@pytest.fixture
def new_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader process that never wrote these events: it knows no Avro schema yet."""
    monkeypatch.setattr(eventbus.payloads, "_INSTANCES", {})


def test_avro_data_of_each_version_reaches_the_v3_handler_upcast() -> None:
    envelopes = written()
    assert [e.datacontenttype for e in envelopes] == ["application/avro"] * 3
    assert [e.dataversion for e in envelopes] == [1, 2, 3]
    assert len({e.dataschema for e in envelopes}) == 3  # each version its own writer schema

    async def scenario() -> None:
        url = memory_url()
        seen: Collector[PlacedV3] = Collector()
        consumer = EventBus(url, registry=reader_registry())

        @consumer.subscribe(PlacedV3, group="g")
        async def handle(event: PlacedV3) -> None:
            seen.add(event)

        async with consumer, EventBus(url) as producer:
            for envelope in envelopes:
                await producer.publish_envelopes(PlacedV3.default_topic(), [envelope])
            assert await seen.wait_count(3) == EXPECTED

    run(scenario)


@pytest.mark.usefixtures("new_reader")
def test_a_reader_resolves_old_writer_schemas_once_they_are_known() -> None:
    registry = reader_registry()
    v1, v2, v3 = written()
    eventbus.payloads._INSTANCES.clear()  # the writing above taught it; forget again
    assert registry.decode(v3) == EXPECTED[2]  # its own class's schema: derived on demand
    for old in (v1, v2):
        with pytest.raises(SchemaError, match=r"unknown Avro writer schema .*register_schema"):
            registry.decode(old)
    assert register_schema(PlacedV1) == v1.dataschema  # the old class, kept (register=False)
    assert register_schema(json.dumps(schema_of(PlacedV2))) == v2.dataschema  # or its .avsc
    assert [registry.decode(e) for e in (v1, v2, v3)] == EXPECTED


def test_msgpack_data_is_upcast_the_same_way() -> None:
    class OldPlaced(Event, type=TYPE, version=1, register=False, payload_format="msgpack"):
        id: str
        cents: int

    envelope = EventBus("memory://").envelope_for(OldPlaced(id="o-1", cents=1250))
    assert envelope.datacontenttype == "application/msgpack"
    assert reader_registry().decode(envelope) == EXPECTED[0]


def test_data_newer_than_the_reader_says_so_before_reading_it() -> None:
    envelope = written()[2]
    registry = Registry()
    registry.register(PlacedV2)
    with pytest.raises(SchemaError, match=r"version 3, newer than this service knows \(2\)"):
        registry.decode(envelope)


def test_protobuf_data_is_upcast_from_the_writers_message_with_python_values() -> None:
    from eventbus.payloads.protobuf import ProtobufFormat
    from tests.payloads.events import proto_module

    messages = proto_module()
    line, order = ProtobufFormat(messages.Line), ProtobufFormat(messages.ShopOrderPlaced)
    kind = "payloads.pb-evolving"

    class LineV1(Event, type=kind, version=1, register=False, payload_format=line):
        sku: str
        quantity: int
        unit_price_cents: int

    class OrderV2(Event, type=kind, version=2, register=False, payload_format=order):
        order_id: str
        amount_cents: int

    registry = Registry()
    registry.register(OrderV2)

    @registry.upcaster(kind, from_version=1)
    def _line_to_order(data: dict[str, Any]) -> dict[str, Any]:
        # int64 fields arrive as ints, as JSON's would (not the JSON mapping's text)
        return {
            "order_id": data["sku"],
            "amount_cents": data["quantity"] * data["unit_price_cents"],
        }

    old = EventBus("memory://").envelope_for(LineV1(sku="o-9", quantity=3, unit_price_cents=2**33))
    assert old.dataschema == "urn:protobuf:eventbus.tests.v1.Line"
    assert registry.decode(old) == OrderV2(order_id="o-9", amount_cents=3 * 2**33)
