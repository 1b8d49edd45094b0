"""Envelope <-> Redis message.

Streams carry CloudEvents in binary mode: every attribute is a stream field
named ``ce_<attribute>`` (``content-type`` for ``datacontenttype``) and the data
is the ``body`` field. Pub/Sub has no headers, so it carries one structured-mode
JSON document. Decoding never raises: it returns the core's
:class:`~eventbus.adapter.Decoded`, whose envelope is ``None`` with the reason for
what cannot be read, so one bad entry cannot stop a consumer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic_core import from_json, to_json

from eventbus.adapter import Decoded
from eventbus.codec import (
    binary_size,
    decode_binary,
    decode_structured,
    encode_binary,
    encode_structured,
    is_json_content_type,
)
from eventbus.envelope import Envelope
from eventbus.errors import DecodeError

PREFIX = "ce_"
"""Field-name prefix of the attributes (Redis has no CloudEvents binding; this is
the Kafka binding's, whose names are valid, readable field names)."""
BODY_FIELD = "body"
# XADD keeps, per entry, field and value lengths and an entry header; this
# over-estimates so a message the adapter accepts is never refused by size.
ENTRY_OVERHEAD = 64
PER_FIELD_OVERHEAD = 8

Fields = dict[str, bytes | str]


def encode_fields(envelope: Envelope) -> tuple[Fields, int]:
    """The stream fields of ``envelope`` and their size in bytes."""
    headers, body = encode_binary(envelope, PREFIX)
    fields: Fields = dict(headers)
    fields[BODY_FIELD] = body
    return fields, fields_size(fields)


def encode_args(envelope: Envelope, head: tuple[Any, ...]) -> tuple[tuple[Any, ...], int]:
    """``head`` (``XADD <stream> [MAXLEN ~ n] *``) followed by the fields of
    ``envelope`` as one flat command, and the entry's size as :func:`fields_size`
    counts it (built in one pass: this runs once per published message)."""
    headers, body = encode_binary(envelope, PREFIX)
    args = [*head]
    for item in headers.items():
        args += item
    args += (BODY_FIELD, body)
    size = (
        ENTRY_OVERHEAD
        + PER_FIELD_OVERHEAD * (len(headers) + 1)
        + len(BODY_FIELD)
        + binary_size(headers, body)
    )
    return tuple(args), size


def fields_size(fields: Mapping[str, bytes | str]) -> int:
    """Bytes ``fields`` take in a stream entry, slightly over-estimated."""
    size = ENTRY_OVERHEAD
    for name, value in fields.items():
        size += PER_FIELD_OVERHEAD + len(name) + len(value)
    return size


def decode_fields(fields: Mapping[bytes, bytes]) -> Decoded:
    """The envelope of a stream entry (or ``None`` and why), its ``body`` field as
    ``raw``, and for an entry that is not an event its other fields as ``raw_headers``
    (:func:`other_fields`), so that its dead letter keeps everything the entry held.

    Only the ``ce_`` fields and ``content-type`` are read as text: any other field
    (a tracing client's binary value) is not ours and never makes an event poison.
    """
    # The usual entry (UTF-8 names and values, as encode_fields writes them) as a
    # dict of text, which the core codec reads by direct lookups.
    body = fields.get(_BODY, b"")
    try:
        headers: Mapping[str, str | bytes] = {
            name.decode(): value.decode() for name, value in fields.items() if name != _BODY
        }
    except (UnicodeDecodeError, AttributeError):
        headers = {
            name.decode("utf-8", "replace"): value
            for name, value in fields.items()
            if name != _BODY
        }
    try:
        return Decoded(decode_binary(headers, body, PREFIX), raw=body)
    except DecodeError as exc:
        return Decoded(None, str(exc), body, other_fields(fields))
    except Exception as exc:  # anything else unreadable is poison too, with the reason
        return Decoded(None, f"{type(exc).__name__}: {exc}", body, other_fields(fields))


def other_fields(fields: Mapping[bytes, bytes]) -> dict[str, bytes]:
    """Every field of an entry but ``body``, values as they are; a name that is not
    UTF-8 keeps its bytes as surrogates (:func:`field_name` gives them back)."""
    return {
        name.decode("utf-8", "surrogateescape"): value
        for name, value in fields.items()
        if name != _BODY
    }


def field_name(name: str) -> bytes:
    """The bytes of a field name :func:`other_fields` made text."""
    return name.encode("utf-8", "surrogateescape")


def raw_fields(payload: bytes, headers: Mapping[str, bytes] | None) -> dict[bytes, bytes]:
    """The fields of an entry holding ``payload`` and ``headers`` as they are (what
    ``publish_raw`` writes): each header a field, ``payload`` the ``body`` field.

    An empty payload beside headers adds no ``body`` field: that is how an entry
    without one (a foreign producer's plain fields) is dead-lettered, so its replay
    is the entry it was. A ``body`` header gives way to a non-empty payload.
    """
    fields = {field_name(name): bytes(value) for name, value in (headers or {}).items()}
    if payload or not fields:
        fields[_BODY] = payload
    return fields


_BODY = BODY_FIELD.encode()
_DATA = b',"data":'


def encode_message(envelope: Envelope) -> bytes:
    """``envelope`` as one structured-mode CloudEvent (what ``encode_structured``
    writes, in one pass for JSON data).

    JSON data is embedded as it is (``"data"`` last) once it parsed as JSON, instead
    of being parsed, re-serialised and compared; anything else is left to
    ``encode_structured`` (``data_base64`` for bytes, text for ``text/*``).
    """
    data = envelope.data
    if data and is_json_content_type(envelope.datacontenttype):
        try:
            from_json(data)
        except ValueError:
            return encode_structured(envelope)
        return to_json(envelope.attributes())[:-1] + _DATA + data + b"}"
    return encode_structured(envelope)


def decode_message(payload: bytes) -> Decoded:
    """The envelope of a Pub/Sub message (structured mode), or ``None`` and why; the
    payload as ``raw``."""
    envelope = _decode_usual(payload)
    if envelope is not None:
        return Decoded(envelope, raw=payload)
    try:
        return Decoded(decode_structured(payload), raw=payload)
    except DecodeError as exc:
        return Decoded(None, str(exc), payload)
    except Exception as exc:
        return Decoded(None, f"{type(exc).__name__}: {exc}", payload)


def _decode_usual(payload: bytes) -> Envelope | None:
    """The usual document (text attributes, then JSON ``"data"`` last, as
    :func:`encode_message` writes it) read without re-serialising the data: the
    attributes are everything before the first top-level ``,"data":`` (the
    sequence cannot occur inside a JSON string, where a quote is escaped) and
    the data is the single JSON value after it, kept byte for byte. ``None`` for
    any other document: ``decode_structured`` then reads it (and reports errors).
    """
    cut = payload.find(_DATA)
    if cut < 0 or not payload.endswith(b"}"):
        return None
    data = payload[cut + len(_DATA) : -1]
    try:
        attributes = from_json(payload[:cut] + b"}")
        from_json(data)  # exactly one JSON value: "data" was the last member
    except ValueError:
        return None
    if (
        type(attributes) is not dict
        or "data_base64" in attributes
        or not all(type(value) is str for value in attributes.values())
    ):
        return None
    if not is_json_content_type(attributes.get("datacontenttype")):
        return None
    try:
        return Envelope.from_text_attributes(attributes, data)
    except Exception:  # missing or unreadable attributes: the full reader says which
        return None
