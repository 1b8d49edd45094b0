"""Protobuf payloads (``eventbus[protobuf]``): the event's data as a message of a class
generated from a ``.proto`` (``protoc --python_out``)::

    from eventbus.payloads.protobuf import ProtobufFormat
    from shop.v1 import orders_pb2

    ORDER = ProtobufFormat(orders_pb2.OrderPlaced)

    class OrderPlaced(Event, type="order.placed", payload_format=ORDER):
        ...

Carried as ``application/protobuf`` with ``dataschema: urn:protobuf:<full name>``
(``urn:protobuf:shop.v1.OrderPlaced``); a reader decodes with the class bound to that
name (its own event class's, or any other ``ProtobufFormat`` created in the process).

The model and the ``.proto`` meet through protobuf's JSON mapping: the model's data
is given to the generated class's constructor (decimals and UUIDs as text, enums as
their values; what it refuses goes through ``json_format.ParseDict``, whose error
names the field) and read back field by field, as ``MessageToDict`` would but with
Python values (int64 as int, a Timestamp as an aware datetime). So a
``.proto`` field has the model field's name and a type that takes its JSON value:
``string`` for str, Decimal and UUID, ``google.protobuf.Timestamp`` for an aware
datetime, ``int64``/``int32``, ``double``, ``bool``, ``repeated``, ``map<string, X>``,
a nested message, an ``optional`` field for ``X | None``, and an ``enum`` whose value
names are the Python enum's values. A model field the ``.proto`` lacks is an error when
publishing, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any
from uuid import UUID

from eventbus.errors import ConfigurationError, SchemaError
from eventbus.payloads import PayloadFormat, add_reader, require
from eventbus.payloads.convert import Convert, converter

if TYPE_CHECKING:
    from eventbus.events import Message

SCHEMA_PREFIX = "urn:protobuf:"
MEDIA_TYPES = ("application/protobuf", "application/x-protobuf")

__all__ = ["SCHEMA_PREFIX", "ProtobufFormat"]

_BOUND: dict[str, ProtobufFormat] = {}  # dataschema -> the format reading it


class ProtobufFormat(PayloadFormat):
    """``application/protobuf``: the event's data as one ``message_class`` message."""

    name = "protobuf"
    content_type = MEDIA_TYPES[0]
    accepts = MEDIA_TYPES[1:]
    per_class = True

    def __init__(self, message_class: type[Any]) -> None:
        self._json = require("google.protobuf.json_format", "protobuf", "ProtobufFormat")
        descriptor = getattr(message_class, "DESCRIPTOR", None)
        if descriptor is None or not hasattr(descriptor, "full_name"):
            raise ConfigurationError(
                f"ProtobufFormat takes a generated message class (from protoc's "
                f"--python_out), not {message_class!r}"
            )
        self.message_class = message_class
        self._converters: dict[type[Message], Convert | None] = {}
        self.dataschema = SCHEMA_PREFIX + descriptor.full_name
        self._read = _reader(descriptor, self._json)
        _BOUND.setdefault(self.dataschema, self)

    def __repr__(self) -> str:
        return f"ProtobufFormat({self.message_class.__name__})"

    def encode(self, message: Message) -> tuple[bytes, str | None]:
        cls = type(message)
        try:
            convert = self._converters[cls]
        except KeyError:
            convert = converter(cls, as_text=(Decimal, UUID), enum_values=True)
            self._converters[cls] = convert
        data = cls.__pydantic_serializer__.to_python(message)
        try:
            # The generated class's constructor takes what the JSON mapping would give
            # it (nested dicts, datetimes for Timestamps, enum value names), ~10x faster.
            proto = self.message_class(**(convert(data) if convert else data))
        except (TypeError, ValueError):
            proto = self._parse_json(message)  # its error says what does not fit
        return proto.SerializeToString(), self.dataschema

    def _parse_json(self, message: Message) -> Any:
        data = type(message).__pydantic_serializer__.to_python(message, mode="json")
        try:
            return self._json.ParseDict(data, self.message_class())
        except self._json.ParseError as exc:
            raise ConfigurationError(
                f"{type(message).__name__} does not fit the protobuf message "
                f"{self.dataschema[len(SCHEMA_PREFIX) :]}: {exc}; give the .proto a field "
                "of that name and a type that takes its JSON value"
            ) from exc

    def reads(self, media: str, dataschema: str | None = None) -> bool:
        return media in MEDIA_TYPES and dataschema in (None, self.dataschema)

    def decode(self, data: bytes, dataschema: str | None) -> dict[str, Any]:
        if dataschema is not None and dataschema != self.dataschema:
            raise SchemaError(
                f"protobuf data of {dataschema} cannot be read as {self.dataschema}: "
                "bind the writer's message class with ProtobufFormat(...)"
            )
        proto = self.message_class()
        try:
            proto.ParseFromString(data)
        except Exception as exc:  # google.protobuf.message.DecodeError and kin
            raise SchemaError(f"data is not a protobuf {self.dataschema}: {exc}") from exc
        return self._read(proto)


# -- reading a message into the model's data -------------------------------------------
#
# What MessageToDict gives, but with Python values where the JSON mapping has text
# (int64 as int, Timestamp as an aware datetime, bytes as bytes), so upcasters see the
# values JSON data would give them, and several times faster (a plan made once per
# message type). An unset field with presence (``optional``, a message) reads as None.

_PLAIN, _PRESENT, _LIST, _MAP = range(4)
_READERS: dict[str, Callable[[Any], dict[str, Any]]] = {}


def _reader(descriptor: Any, json_format: Any) -> Callable[[Any], dict[str, Any]]:
    found = _READERS.get(descriptor.full_name)
    if found is not None:
        return found
    plan: list[tuple[str, int, Callable[[Any], Any] | None]] = []

    def read(message: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, kind, convert in plan:
            value = getattr(message, name)
            if kind == _PLAIN:
                out[name] = value if convert is None else convert(value)
            elif kind == _PRESENT:
                present = message.HasField(name)
                out[name] = None if not present else value if convert is None else convert(value)
            elif kind == _LIST:
                out[name] = list(value) if convert is None else [convert(v) for v in value]
            else:
                out[name] = (
                    dict(value) if convert is None else {k: convert(v) for k, v in value.items()}
                )
        return out

    _READERS[descriptor.full_name] = read  # before the fields: a message may nest itself
    for field in descriptor.fields:
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            plan.append((field.name, _MAP, _value(entry.fields_by_name["value"], json_format)))
        elif field.is_repeated:
            plan.append((field.name, _LIST, _value(field, json_format)))
        else:
            kind = _PRESENT if field.has_presence else _PLAIN
            plan.append((field.name, kind, _value(field, json_format)))
    return read


def _value(field: Any, json_format: Any) -> Callable[[Any], Any] | None:
    """How one value of ``field`` is read (``None``: as it is, a Python scalar)."""
    kind = field.message_type
    if kind is not None:
        if kind.full_name == "google.protobuf.Timestamp":
            return partial(_timestamp, tz=UTC)
        if kind.full_name.startswith("google.protobuf."):  # Struct, Duration, wrappers...
            return partial(json_format.MessageToDict, preserving_proto_field_name=True)
        return _reader(kind, json_format)
    if field.enum_type is not None:
        names = {value.number: value.name for value in field.enum_type.values}
        return lambda number: names.get(number, number)
    return None


def _timestamp(value: Any, tz: Any) -> Any:
    return value.ToDatetime(tzinfo=tz)


def _find(media: str, dataschema: str | None) -> PayloadFormat | None:
    if media in MEDIA_TYPES and dataschema is not None:
        return _BOUND.get(dataschema)
    return None


add_reader(_find)
