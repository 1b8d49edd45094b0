"""MessagePack payloads (``eventbus[msgpack]``), encoded by msgspec.

msgspec rather than ormsgpack: it writes what pydantic's serializer gives (so field
serializers and aliases apply as for JSON) with datetimes as msgpack timestamps
(microseconds kept), and decimals, UUIDs and enums without a ``default`` hook; its
decoder reads the timestamps back as datetimes. ormsgpack's pydantic fast path reads
the model's ``__dict__``, past pydantic's serializers, and its timestamp extension
needs an ``ext_hook`` on every read.

What travels: the model's data as pydantic dumps it in Python mode, so the reader
validates the same values JSON would carry (a ``Decimal`` and a ``UUID`` as text).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eventbus.errors import ConfigurationError, SchemaError
from eventbus.payloads import PayloadFormat, require

if TYPE_CHECKING:
    from eventbus.events import Message


class MsgPackFormat(PayloadFormat):
    """``application/msgpack``: the event's data as one MessagePack map."""

    name = "msgpack"
    content_type = "application/msgpack"
    accepts = ("application/x-msgpack", "application/vnd.msgpack")

    def __init__(self) -> None:
        msgspec = require("msgspec", "msgpack", "the msgpack payload format")
        self._encode = msgspec.msgpack.Encoder().encode
        self._decode = msgspec.msgpack.Decoder().decode
        self._errors: tuple[type[Exception], ...] = (msgspec.DecodeError, ValueError)

    def encode(self, message: Message) -> tuple[bytes, str | None]:
        data = type(message).__pydantic_serializer__.to_python(message)
        try:
            return self._encode(data), None
        except TypeError as exc:
            raise ConfigurationError(
                f"{type(message).__name__} cannot be encoded as msgpack: {exc}; give the "
                "field a type msgpack carries or a pydantic field_serializer"
            ) from exc

    def decode(self, data: bytes, dataschema: str | None) -> dict[str, Any]:
        try:
            value = self._decode(data)
        except self._errors as exc:
            raise SchemaError(f"data is not MessagePack ({exc})") from exc
        if not isinstance(value, dict):
            raise SchemaError(f"msgpack data is a {type(value).__name__}, not a map")
        return value
