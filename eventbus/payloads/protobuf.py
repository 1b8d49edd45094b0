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
names the field) and read back with ``MessageToDict``, field names kept. So a
``.proto`` field has the model field's name and a type that takes its JSON value:
``string`` for str, Decimal and UUID, ``google.protobuf.Timestamp`` for an aware
datetime, ``int64``/``int32``, ``double``, ``bool``, ``repeated``, ``map<string, X>``,
a nested message, an ``optional`` field for ``X | None``, and an ``enum`` whose value
names are the Python enum's values. A model field the ``.proto`` lacks is an error when
publishing, never silently dropped.
"""

from __future__ import annotations

from decimal import Decimal
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
        # The fields that have presence (``optional`` scalars, messages): unset, they
        # read as None, so an ``X | None`` model field gets its None back.
        self._present = [
            field.name for field in descriptor.fields if getattr(field, "has_presence", False)
        ]
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
        value: dict[str, Any] = self._json.MessageToDict(
            proto, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for name in self._present:
            if name not in value:
                value[name] = None
        return value


def _find(media: str, dataschema: str | None) -> PayloadFormat | None:
    if media in MEDIA_TYPES and dataschema is not None:
        return _BOUND.get(dataschema)
    return None


add_reader(_find)
