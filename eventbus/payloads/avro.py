"""Avro payloads (``eventbus[avro]``), written and read by fastavro.

The schema is derived from the event class (:mod:`eventbus.payloads.avro_schema`);
the data is Avro's binary encoding without a header, and ``dataschema`` names the
writer's schema by its Avro fingerprint (CRC-64-AVRO of the parsing canonical form)::

    dataschema: urn:avro:crc-64-avro:5b2c0e1e9f0a1c3d

A reader resolves that fingerprint from the schemas it knows: those of the classes
it has encoded or decoded to (derived on first use), and those given to
:func:`register_schema` (an old version's class or its schema, kept to read data
written before an upgrade). The data is read with the writer's schema into a dict;
the registry's upcasters take it from the writer's data version to the reader's, and
pydantic validates it (a field added with a default gets its default), as for JSON.
"""

from __future__ import annotations

import contextlib
import io
import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from eventbus.errors import ConfigurationError, SchemaError
from eventbus.payloads import PayloadFormat, format_named, require
from eventbus.payloads.avro_schema import model_schema
from eventbus.payloads.convert import converter

if TYPE_CHECKING:
    from eventbus.events import Message

SCHEMA_PREFIX = "urn:avro:crc-64-avro:"

__all__ = ["SCHEMA_PREFIX", "AvroFormat", "register_schema", "schema_of"]


class AvroFormat(PayloadFormat):
    """``application/avro``: the event's data as one Avro record, its schema derived
    from the class and identified in ``dataschema``."""

    name = "avro"
    content_type = "application/avro"
    accepts = ("avro/binary",)

    def __init__(self) -> None:
        self._fastavro = require("fastavro", "avro", "the avro payload format")
        # class -> (parsed schema, dataschema); dataschema -> parsed schema
        self._by_class: dict[type[Message], tuple[Any, str]] = {}
        self._converters: dict[type[Message], Any] = {}
        self._by_id: dict[str, Any] = {}

    def schema(self, cls: type[Message]) -> tuple[Any, str]:
        """``cls``'s parsed schema and the ``dataschema`` that names it."""
        known = self._by_class.get(cls)
        if known is None:
            known = self._by_class[cls] = self.register(model_schema(cls))
        return known

    def register(self, schema: dict[str, Any] | str) -> tuple[Any, str]:
        """Know ``schema`` (a dict or its JSON text) from now on; its parsed form and id."""
        fastavro = self._fastavro
        raw = json.loads(schema) if isinstance(schema, str) else schema
        try:
            parsed = fastavro.parse_schema(raw)
        except Exception as exc:  # fastavro raises SchemaParseException and others
            raise ConfigurationError(f"not a valid Avro schema: {exc}") from exc
        canonical = fastavro.schema.to_parsing_canonical_form(parsed)
        schema_id = SCHEMA_PREFIX + fastavro.schema.fingerprint(canonical, "CRC-64-AVRO")
        self._by_id.setdefault(schema_id, parsed)
        return parsed, schema_id

    def learn(self, cls: type[Message]) -> None:
        if cls not in self._by_class:
            # A reader class with no Avro schema may still read the writer's data.
            with contextlib.suppress(ConfigurationError):
                self.schema(cls)

    def encode(self, message: Message) -> tuple[bytes, str | None]:
        cls = type(message)
        parsed, schema_id = self.schema(cls)
        out = io.BytesIO()
        record = cls.__pydantic_serializer__.to_python(message)
        try:
            convert = self._converters[cls]
        except KeyError:
            # fastavro takes the rest as dumped (str enums, UUIDs, datetimes, sets).
            convert = converter(cls, as_text=(Decimal,), enum_values=False)
            self._converters[cls] = convert
        if convert is not None:
            record = convert(record)
        try:
            self._fastavro.schemaless_writer(out, parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ConfigurationError(
                f"{cls.__name__} does not fit its Avro schema: {exc!r}"
            ) from exc
        return out.getvalue(), schema_id

    def decode(self, data: bytes, dataschema: str | None) -> dict[str, Any]:
        if not dataschema:
            raise SchemaError(
                "Avro data without dataschema: the writer's schema is unknown, and Avro "
                "binary data cannot be read without it"
            )
        writer = self._writer(dataschema)
        try:
            value = self._fastavro.schemaless_reader(io.BytesIO(data), writer, None)
        except Exception as exc:  # a truncated record, or schemas that do not resolve
            raise SchemaError(
                f"Avro data does not read with its schema {dataschema}: {exc!r}"
            ) from exc
        if not isinstance(value, dict):
            raise SchemaError(f"Avro data is a {type(value).__name__}, not a record")
        return value

    def _writer(self, dataschema: str) -> Any:
        found = self._by_id.get(dataschema)
        if found is None:
            raise SchemaError(
                f"unknown Avro writer schema {dataschema}: no class here has it; keep the "
                "writer's schema known with eventbus.payloads.avro.register_schema(OldClass) "
                "(a class declared with register=False) or register_schema(its .avsc JSON)"
            )
        return found


def _format() -> AvroFormat:
    found = format_named("avro")
    assert isinstance(found, AvroFormat)
    return found


def register_schema(schema: type[Message] | dict[str, Any] | str) -> str:
    """Know a writer's schema from now on (an old version's class, a schema dict or its
    JSON text), so Avro data written with it decodes; returns its ``dataschema`` id."""
    fmt = _format()
    if isinstance(schema, type):
        return fmt.schema(schema)[1]
    return fmt.register(schema)[1]


def schema_of(cls: type[Message]) -> dict[str, Any]:
    """The Avro schema derived from ``cls`` (to publish as a ``.avsc`` file)."""
    return model_schema(cls)
