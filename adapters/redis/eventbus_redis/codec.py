"""Envelope <-> Redis message.

Streams carry CloudEvents in binary mode: every attribute is a stream field
named ``ce_<attribute>`` (``content-type`` for ``datacontenttype``) and the data
is the ``body`` field. Pub/Sub has no headers, so it carries one structured-mode
JSON document. Decoding never raises: what cannot be read becomes an envelope of
``None`` and the reason, so one bad entry cannot stop a consumer.
"""

from __future__ import annotations

from collections.abc import Mapping

from eventbus.codec import decode_binary, decode_structured, encode_binary
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


def fields_size(fields: Mapping[str, bytes | str]) -> int:
    """Bytes ``fields`` take in a stream entry, slightly over-estimated."""
    size = ENTRY_OVERHEAD
    for name, value in fields.items():
        size += PER_FIELD_OVERHEAD + len(name) + len(value)
    return size


def decode_fields(fields: Mapping[bytes, bytes]) -> tuple[Envelope | None, bytes, str | None]:
    """The envelope of a stream entry (or ``None``), its body, and why not."""
    headers: dict[str, bytes] = {}
    body = b""
    for name, value in fields.items():
        text = name.decode("utf-8", "replace")
        if text == BODY_FIELD:
            body = value
        else:
            headers[text] = value
    try:
        return decode_binary(headers, body, PREFIX), body, None
    except DecodeError as exc:
        return None, body, str(exc)
    except Exception as exc:  # anything else unreadable is poison too, with the reason
        return None, body, f"{type(exc).__name__}: {exc}"


def decode_message(payload: bytes) -> tuple[Envelope | None, str | None]:
    """The envelope of a Pub/Sub message (structured mode), or ``None`` and why."""
    try:
        return decode_structured(payload), None
    except DecodeError as exc:
        return None, str(exc)
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
