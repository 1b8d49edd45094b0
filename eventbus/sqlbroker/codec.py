"""Envelope <-> database row: CloudEvents binary mode, headers as JSON text beside the body.

A row keeps what a broker with headers keeps: the attributes as ``ce_`` headers
(the prefix of the Kafka binding, which the memory broker uses too) and
``content-type``, in the ``headers`` column as a JSON object, and the data as
the ``body`` column, byte for byte. JSON keeps the rows readable from any SQL
client (``SELECT headers FROM eventbus_messages``). A foreign producer's header
value that is not UTF-8 text is kept as ``{"b64": "..."}`` so it survives
exactly; only the ``ce_`` headers and ``content-type`` are read as text, so such
a header never makes a valid CloudEvent poison.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from eventbus import codec
from eventbus.envelope import Envelope
from eventbus.errors import DecodeError

PREFIX = codec.KAFKA_PREFIX
"""Attribute header prefix of the rows (``ce_``)."""


def encode(envelope: Envelope) -> tuple[str, bytes, int]:
    """The ``headers`` column (JSON text), the body, and the message's size in bytes
    (body plus header names and values, as every adapter counts it)."""
    headers, body, size = codec.encode_binary_sized(envelope, PREFIX)
    return json.dumps(headers, separators=(",", ":"), ensure_ascii=False), body, size


def encode_raw(payload: bytes, headers: Mapping[str, bytes] | None) -> tuple[str, int]:
    """The ``headers`` column for a foreign message's headers, and their size in bytes."""
    stored: dict[str, Any] = {}
    size = len(payload)
    for name, value in (headers or {}).items():
        raw = bytes(value)
        size += len(name.encode()) + len(raw)
        try:
            stored[name] = raw.decode("utf-8")
        except UnicodeDecodeError:
            stored[name] = {"b64": base64.b64encode(raw).decode("ascii")}
    return json.dumps(stored, separators=(",", ":"), ensure_ascii=False), size


def decode(
    headers: str, body: bytes
) -> tuple[Envelope | None, str | None, dict[str, bytes] | None]:
    """``(envelope, None, None)`` for a CloudEvent; ``(None, why, headers as bytes)``
    for anything else, so its dead letter keeps the headers it arrived with."""
    try:
        stored = json.loads(headers) if headers else {}
        if not isinstance(stored, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        return None, f"DecodeError: the headers column is not a JSON object ({exc})", None
    try:
        if all(type(value) is str for value in stored.values()):
            return codec.decode_binary_dict(stored, body, PREFIX), None, None
        pairs = [(name, _value(value)) for name, value in stored.items()]
        return codec.decode_binary(pairs, body, PREFIX), None, None
    except DecodeError as exc:
        return None, f"{type(exc).__name__}: {exc}", _as_bytes(stored)


def _value(value: Any) -> str | bytes:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("b64"), str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            pass
    return json.dumps(value)


def _as_bytes(stored: dict[str, Any]) -> dict[str, bytes]:
    out = {}
    for name, value in stored.items():
        kept = _value(value)
        out[name] = kept.encode("utf-8") if isinstance(kept, str) else kept
    return out
