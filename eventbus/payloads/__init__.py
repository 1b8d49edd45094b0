"""Payload formats: how an event's data is encoded in ``Envelope.data``.

JSON (pydantic's own encoding) is the default and nothing here runs for it: an event
class or a bus that names no other format publishes and decodes exactly as before.
Three more formats, each behind its optional extra and imported only when used:

- ``"msgpack"`` (``eventbus[msgpack]``, msgspec): ``application/msgpack``;
- ``"avro"`` (``eventbus[avro]``, fastavro): ``application/avro``, the schema derived
  from the pydantic model, its fingerprint in ``dataschema``
  (:class:`~eventbus.payloads.avro.AvroFormat`);
- :class:`~eventbus.payloads.protobuf.ProtobufFormat` (``eventbus[protobuf]``): a class
  generated from a ``.proto``, ``application/protobuf``, its full name in ``dataschema``.

Choose one per class (``class OrderPlaced(Event, payload_format="avro")``) or per bus
(``EventBus(..., payload_format="msgpack")``; a class's own choice wins). A consumer
decodes by ``datacontenttype``, whatever it would publish itself, so one topic can carry
two formats while producers migrate. The data read is a dict of the writer's version;
the registry's upcasters then bring it to the class's version, as for JSON.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from eventbus.errors import ConfigurationError, SchemaError

if TYPE_CHECKING:
    from eventbus.events import Message

__all__ = [
    "BUILTIN_FORMATS",
    "JSON_NAME",
    "PayloadFormat",
    "check_format",
    "content_type_of",
    "encode_payload",
    "format_named",
    "media_type",
    "read_payload",
]

JSON_NAME = "json"
BUILTIN_FORMATS = ("json", "msgpack", "avro")
"""The names a class or a bus may give as ``payload_format`` (protobuf needs its class:
``ProtobufFormat(OrderPlaced_pb2.OrderPlaced)``)."""


class PayloadFormat:
    """One way of encoding an event's data. Subclasses set ``name`` and
    ``content_type`` and implement :meth:`encode` and :meth:`decode`."""

    name: str = ""
    content_type: str = ""
    accepts: tuple[str, ...] = ()
    """Other media types read as this format (e.g. ``application/x-msgpack``)."""
    per_class: bool = False
    """True when an instance is bound to one event class (protobuf), so it cannot be
    a bus's default."""

    def encode(self, message: Message) -> tuple[bytes, str | None]:
        """The data bytes and the ``dataschema`` (or ``None``) for ``message``."""
        raise NotImplementedError

    def decode(self, data: bytes, dataschema: str | None) -> dict[str, Any]:
        """The writer's data as Python values (of the writer's data version: the
        registry upcasts them afterwards); raise :class:`SchemaError` when unreadable."""
        raise NotImplementedError

    def learn(self, cls: type[Message]) -> None:
        """Called before decoding data for ``cls``: a format with schemas knows the
        reader class's from then on (the writer's may be the same)."""

    def reads(self, media: str, dataschema: str | None = None) -> bool:
        """Whether this format decodes data of media type ``media`` (lowercase, no
        parameters) written with ``dataschema``."""
        return media == self.content_type or media in self.accepts

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def media_type(content_type: str) -> str:
    """``content_type`` without parameters, lowercase: ``application/avro``."""
    return content_type.split(";", 1)[0].strip().lower()


def require(module: str, extra: str, what: str) -> Any:
    """Import ``module`` or raise :class:`ConfigurationError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"{what} needs {module.split('.')[0]!r}, which is not installed: "
            f'pip install "eventbus[{extra}]"'
        ) from exc


# name -> (module, class) of the built-in formats, imported on first use
_BUILTIN: dict[str, tuple[str, str]] = {
    "msgpack": ("eventbus.payloads.msgpack", "MsgPackFormat"),
    "avro": ("eventbus.payloads.avro", "AvroFormat"),
}
_INSTANCES: dict[str, PayloadFormat] = {}
# media type -> the name of the built-in format that reads it
_BUILTIN_MEDIA = {
    "application/msgpack": "msgpack",
    "application/x-msgpack": "msgpack",
    "application/vnd.msgpack": "msgpack",
    "application/avro": "avro",
    "avro/binary": "avro",
}
_READERS: list[Callable[[str, str | None], PayloadFormat | None]] = []


def add_reader(find: Callable[[str, str | None], PayloadFormat | None]) -> None:
    """Register ``find(media, dataschema)``, asked for data no built-in format reads
    (the protobuf module finds the class named by ``dataschema`` this way)."""
    if find not in _READERS:
        _READERS.append(find)


def format_named(name: str) -> PayloadFormat | None:
    """The built-in format called ``name`` (``None`` for ``"json"``, the default path)."""
    if name == JSON_NAME:
        return None
    found = _INSTANCES.get(name)
    if found is None:
        where = _BUILTIN.get(name)
        if where is None:
            raise ConfigurationError(
                f"unknown payload format {name!r}: use one of {', '.join(BUILTIN_FORMATS)}, "
                "or a PayloadFormat instance (ProtobufFormat(YourMessage_pb2.YourMessage))"
            )
        module = importlib.import_module(where[0])
        found = _INSTANCES[name] = getattr(module, where[1])()
    return found


def check_format(spec: object, where: str, *, per_class: bool) -> str | PayloadFormat | None:
    """``spec`` if it names a payload format (a built-in name, an instance or ``None``);
    else :class:`ConfigurationError` saying what ``where`` takes. A bus default
    (``per_class=False``) cannot be a format bound to one class."""
    if spec is None or isinstance(spec, PayloadFormat):
        if isinstance(spec, PayloadFormat) and spec.per_class and not per_class:
            raise ConfigurationError(
                f"{where}: {spec!r} is bound to one message class; give it to that class "
                "(class OrderPlaced(Event, payload_format=ProtobufFormat(...))), not to the bus"
            )
        return spec
    if isinstance(spec, str) and spec in BUILTIN_FORMATS:
        return spec
    raise ConfigurationError(
        f"{where}: payload_format={spec!r} is not a payload format: use one of "
        f"{', '.join(repr(n) for n in BUILTIN_FORMATS)}, or a PayloadFormat instance"
    )


_CONTENT_TYPES = {
    "json": "application/json",
    "msgpack": "application/msgpack",
    "avro": "application/avro",
}


def content_type_of(cls: type[Message], default: str | PayloadFormat | None = None) -> str:
    """The ``datacontenttype`` ``cls`` is published with (``default``: the bus's
    format), without importing the format's library."""
    spec = cls.__payload_format__ or default
    if spec is None:
        return _CONTENT_TYPES["json"]
    return _CONTENT_TYPES[spec] if isinstance(spec, str) else spec.content_type


def _resolve(spec: str | PayloadFormat) -> PayloadFormat | None:
    return format_named(spec) if isinstance(spec, str) else spec


def encode_payload(message: Message, spec: str | PayloadFormat) -> tuple[bytes, str, str | None]:
    """``message``'s data, content type and ``dataschema`` in format ``spec``."""
    fmt = _resolve(spec)
    if fmt is None:
        from eventbus.envelope import JSON

        return message.to_bytes(), JSON, None
    data, schema = fmt.encode(message)
    return data, fmt.content_type, schema


def read_payload(
    data: bytes, content_type: str, dataschema: str | None, cls: type[Message], event: str
) -> dict[str, Any]:
    """Decode non-JSON ``data`` by its content type into the writer's data, for ``cls``.

    Raises :class:`SchemaError` (the message is dead-lettered) for a content type no
    format reads, a missing extra, or data the format cannot read. ``event`` names
    the message in errors.
    """
    media = media_type(content_type)
    fmt = _reader(media, dataschema, cls, event)
    try:
        fmt.learn(cls)
        return fmt.decode(data, dataschema)
    except ConfigurationError as exc:
        raise SchemaError(f"event {event} cannot be decoded here: {exc}") from exc


def _reader(media: str, dataschema: str | None, cls: type[Message], event: str) -> PayloadFormat:
    own = cls.__payload_format__
    if own is not None and not isinstance(own, str) and own.reads(media, dataschema):
        return own
    name = _BUILTIN_MEDIA.get(media)
    if name is not None:
        try:
            found = format_named(name)
        except ConfigurationError as exc:
            raise SchemaError(f"event {event} is {media}: {exc}") from exc
        assert found is not None
        return found
    for find in _READERS:
        found = find(media, dataschema)
        if found is not None:
            return found
    raise SchemaError(
        f"event {event} has data of content type {media!r}, which no payload format here "
        f"reads (dataschema {dataschema!r}): eventbus reads JSON, application/msgpack, "
        "application/avro, and application/protobuf of a message class bound with "
        "ProtobufFormat(YourMessage_pb2.YourMessage)"
    )
