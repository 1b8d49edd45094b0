"""Typed events and commands, the registry, upcasting, and poison (SchemaError) cases."""

from __future__ import annotations

import json
from typing import Any

import pydantic
import pytest

from eventbus import (
    Command,
    ConfigurationError,
    Envelope,
    Event,
    PoisonMessageError,
    Registry,
    SchemaError,
    registry,
)


class ItemAdded(Event, type="test.events.item-added", topic="test-events-items", version=1):
    item_id: str
    quantity: int = 1


class Unnamed(Event):
    value: int


class ShipOrder(Command, topic="test-events-shipping"):
    order_id: str


def envelope_for(message_type: str, data: Any, version: int = 1) -> Envelope:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return Envelope.create(type=message_type, source="test", data=raw, dataversion=version)


def test_class_keywords_set_type_topic_version() -> None:
    assert ItemAdded.event_type() == "test.events.item-added"
    assert ItemAdded.default_topic() == "test-events-items"
    assert ItemAdded.data_version() == 1
    assert ItemAdded.__kind__ == "event"
    assert ShipOrder.__kind__ == "command"


def test_defaults_are_class_name_for_type_and_topic() -> None:
    assert Unnamed.event_type() == "Unnamed"
    assert Unnamed.default_topic() == "Unnamed"
    assert ShipOrder.event_type() == "ShipOrder"
    assert ShipOrder.default_topic() == "test-events-shipping"


def test_topic_can_be_set_in_the_class_body() -> None:
    class BodyTopic(Event, type="test.events.body-topic", register=False):
        __topic__ = "test-events-body"

    assert BodyTopic.default_topic() == "test-events-body"
    assert BodyTopic.event_type() == "test.events.body-topic"


def test_messages_are_immutable_and_validated() -> None:
    event = ItemAdded(item_id="a", quantity=2)
    with pytest.raises(pydantic.ValidationError):
        event.quantity = 3
    with pytest.raises(pydantic.ValidationError):
        ItemAdded(item_id="a", quantity="many")  # type: ignore[arg-type]


def test_to_bytes_is_compact_json() -> None:
    assert ItemAdded(item_id="a", quantity=2).to_bytes() == b'{"item_id":"a","quantity":2}'


def test_subclasses_register_in_the_global_registry() -> None:
    assert registry.get("test.events.item-added") is ItemAdded
    assert registry.get("ShipOrder") is ShipOrder
    assert registry.get("never.defined") is None


def test_register_false_keeps_class_out_of_the_registry() -> None:
    class Private(Event, type="test.events.private", register=False):
        pass

    assert registry.get("test.events.private") is None


def test_two_classes_claiming_one_type_is_a_configuration_error() -> None:
    local = Registry()

    class First(Event, type="test.events.clash", register=False):
        pass

    class Second(Event, type="test.events.clash", register=False):
        pass

    local.register(First)
    local.register(First)  # registering the same class again is fine
    with pytest.raises(ConfigurationError, match="claimed by both") as info:
        local.register(Second)
    assert "First" in str(info.value) and "Second" in str(info.value)
    assert "type=" in str(info.value)


def test_redefining_the_same_class_replaces_it() -> None:
    """A module reloaded (same qualified name) takes over its type without error."""
    local = Registry()

    def define() -> type[Event]:
        class Reloaded(Event, type="test.events.reloaded", register=False):
            pass

        return Reloaded

    old, new = define(), define()
    local.register(old)
    local.register(new)
    assert local.get("test.events.reloaded") is new


def test_decode_builds_the_typed_message() -> None:
    event = registry.decode(envelope_for("test.events.item-added", {"item_id": "x"}))
    assert event == ItemAdded(item_id="x", quantity=1)


def test_decode_with_explicit_class_ignores_registry() -> None:
    local = Registry()
    env = envelope_for("anything", {"item_id": "y", "quantity": 4})
    assert local.decode(env, ItemAdded) == ItemAdded(item_id="y", quantity=4)


def test_decode_empty_data_is_an_empty_object() -> None:
    class NoFields(Event, type="test.events.no-fields", register=False):
        pass

    assert isinstance(Registry().decode(envelope_for("x", b""), NoFields), NoFields)


def test_unknown_type_is_poison_naming_type_and_id() -> None:
    env = envelope_for("test.events.nobody-knows", {})
    with pytest.raises(SchemaError, match="unknown event type") as info:
        registry.decode(env)
    assert env.id in str(info.value) and "test.events.nobody-knows" in str(info.value)
    assert isinstance(info.value, PoisonMessageError)


def test_data_that_is_not_json_is_poison() -> None:
    env = envelope_for("test.events.item-added", b"\x00not json")
    with pytest.raises(SchemaError, match="not JSON"):
        registry.decode(env)


def test_invalid_data_is_poison_naming_the_field() -> None:
    env = envelope_for("test.events.item-added", {"item_id": "x", "quantity": "lots"})
    with pytest.raises(SchemaError, match="failed validation") as info:
        registry.decode(env)
    assert "quantity" in str(info.value)
    assert isinstance(info.value.__cause__, pydantic.ValidationError)


class _Versioned:
    """A private registry with a v3 class and upcasters 1->2 and 2->3."""

    def __init__(self) -> None:
        self.registry = Registry()
        self.calls: list[int] = []

        class Renamed(Event, type="test.events.renamed", version=3, register=False):
            order_id: str
            currency: str

        self.cls = Renamed
        self.registry.register(Renamed)

        @self.registry.upcaster("test.events.renamed", from_version=1)
        def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
            self.calls.append(1)
            data = dict(data)
            return {"order_id": data.pop("id"), **data}

        @self.registry.upcaster("test.events.renamed", from_version=2)
        def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
            self.calls.append(2)
            return {**data, "currency": data.get("currency", "EUR")}

        self.v1_to_v2 = v1_to_v2


def test_upcasters_chain_old_versions_to_current() -> None:
    versioned = _Versioned()
    env = envelope_for("test.events.renamed", {"id": "o-1"}, version=1)
    assert versioned.registry.decode(env) == versioned.cls(order_id="o-1", currency="EUR")
    assert versioned.calls == [1, 2]


def test_upcaster_decorator_returns_the_function() -> None:
    versioned = _Versioned()
    assert versioned.v1_to_v2({"id": "a"}) == {"order_id": "a"}


def test_current_version_needs_no_upcaster() -> None:
    versioned = _Versioned()
    env = envelope_for("test.events.renamed", {"order_id": "o", "currency": "USD"}, version=3)
    assert versioned.registry.decode(env) == versioned.cls(order_id="o", currency="USD")
    assert versioned.calls == []


def test_newer_version_than_known_is_poison() -> None:
    versioned = _Versioned()
    env = envelope_for("test.events.renamed", {"order_id": "o"}, version=4)
    with pytest.raises(SchemaError, match="newer than this service knows"):
        versioned.registry.decode(env)


def test_missing_upcaster_is_poison_saying_how_to_register_one() -> None:
    local = Registry()

    class Gap(Event, type="test.events.gap", version=2, register=False):
        value: int

    local.register(Gap)
    env = envelope_for("test.events.gap", {"value": 1}, version=1)
    with pytest.raises(SchemaError, match="no upcaster from version 1") as info:
        local.decode(env)
    assert "@registry.upcaster('test.events.gap', from_version=1)" in str(info.value)


def test_old_version_data_that_is_not_json_is_poison() -> None:
    versioned = _Versioned()
    env = envelope_for("test.events.renamed", b"{broken", version=1)
    with pytest.raises(SchemaError, match="not JSON"):
        versioned.registry.decode(env)


def test_upcast_data_that_fails_validation_is_poison() -> None:
    versioned = _Versioned()
    env = envelope_for("test.events.renamed", {"id": 12345}, version=1)
    with pytest.raises(SchemaError, match="failed validation") as info:
        versioned.registry.decode(env)
    assert "order_id" in str(info.value) and "v1" in str(info.value)


def test_decode_goes_through_an_overridden_model_validate_json() -> None:
    # Decoding calls pydantic's validator directly for speed, except for a class
    # that customises model_validate_json: that override must still run.
    class Audited(Event, type="test.events.audited", register=False):
        value: int

        @classmethod
        def model_validate_json(cls, json_data: Any, **options: Any) -> Audited:  # type: ignore[override]
            event = super().model_validate_json(json_data, **options)
            return event.model_copy(update={"value": event.value * 10})

    local = Registry()
    env = envelope_for("test.events.audited", {"value": 4})
    assert local.decode(env, Audited) == Audited(value=40)
    plain = local.decode(envelope_for("x", {"item_id": "z"}), ItemAdded)
    assert plain == ItemAdded(item_id="z") and type(plain) is ItemAdded
