"""The wire work every fair raw contender does: CloudEvents attributes per event, by hand.

A *fair* raw contender is the broker's raw client doing the wire work eventbus
must do, and nothing of eventbus's machinery: per published event it builds the
same CloudEvents attributes eventbus's binary mode writes on that broker (a new
id, the time, source, type, spec and data versions, content type, correlation
id: what a default ``publish`` of a ``Tick`` carries), and per received event it
reads those attributes back as text, checks the spec version and the type (what
routing to the handler needs) and validates the data into the same pydantic
model. Against the bare raw loop it shows what the envelope costs on that client;
against eventbus, what eventbus's own machinery costs.

Written here once, with the standard library and pydantic only (not with
eventbus's codec, whose cost is what the comparison isolates), and shaped per
broker by a :class:`Binding`: the header prefix and where ``datacontenttype``
goes. Brokers without headers for us (Redis Pub/Sub, SQS) carry the structured
JSON document instead (:func:`structured`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic_core import from_json, to_json
from runner import Tick

SOURCE = "bench"
CONTENT_TYPE = "application/json"
TYPE = "bench.tick"
SPECVERSION = "1.0"


@dataclass(frozen=True)
class Binding:
    """How one broker's binary mode names the attributes.

    ``content_type``: the header ``datacontenttype`` travels in, or ``None`` where the
    client has a property for it (RabbitMQ's ``content_type``), which the contender sets.
    """

    prefix: str
    content_type: str | None = "content-type"


KAFKA = Binding("ce_")
"""Kafka headers: ``ce_<name>``, ``content-type``."""
REDIS_STREAMS = Binding("ce_")
"""Redis stream fields, as the Redis adapter writes them (the Kafka binding's names)."""
RABBITMQ = Binding("ce-", None)
"""AMQP headers ``ce-<name>``; the content type is the message's ``content_type``."""
NATS = Binding("ce-", "ce-datacontenttype")
"""NATS headers ``ce-<name>``, the content type among them."""


def now_text() -> str:
    """The current UTC time as RFC 3339 text with microseconds and ``Z``."""
    return datetime.now(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def attributes(source: str = SOURCE) -> dict[str, str]:
    """A default publish's CloudEvents attributes for one new ``Tick`` (new id, now)."""
    event_id = str(uuid.uuid4())
    return {
        "specversion": SPECVERSION,
        "id": event_id,
        "source": source,
        "type": TYPE,
        "time": now_text(),
        "datacontenttype": CONTENT_TYPE,
        "dataversion": "1",
        "correlationid": event_id,  # a new event starts its own correlation
    }


def headers(binding: Binding) -> dict[str, str]:
    """One event's binary-mode headers on ``binding`` (text values)."""
    prefix, content_type = binding.prefix, binding.content_type
    out: dict[str, str] = {}
    for name, value in attributes().items():
        if name != "datacontenttype":
            out[prefix + name] = value
        elif content_type is not None:
            out[content_type] = value
    return out


def header_list(binding: Binding) -> list[tuple[str, bytes]]:
    """:func:`headers` as ``(name, UTF-8 bytes)`` pairs, for clients taking such lists."""
    return [(name, value.encode()) for name, value in headers(binding).items()]


_DATA = b',"data":'


def structured(event: Tick) -> bytes:
    """One event as a structured-mode JSON document, the data embedded as JSON."""
    return to_json(attributes())[:-1] + _DATA + event.to_bytes() + b"}"


def _text(value: str | bytes | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _checked(attrs: dict[str, str], where: str) -> None:
    if attrs.get("specversion") != SPECVERSION or attrs.get("type") != TYPE:
        raise ValueError(
            f"{where}: not a {TYPE!r} CloudEvent (specversion {attrs.get('specversion')!r}, "
            f"type {attrs.get('type')!r}); the fair contender reads only its own events"
        )


def read_binary(
    pairs: Iterable[tuple[str | bytes, str | bytes | None]], body: bytes | str, binding: Binding
) -> Tick:
    """A received binary-mode event: its attributes read as text, checked, data validated."""
    prefix, skip = binding.prefix, len(binding.prefix)
    attrs: dict[str, str] = {}
    for raw_name, value in pairs:
        name = _text(raw_name)
        if name.startswith(prefix):
            attrs[name[skip:]] = _text(value)
    _checked(attrs, "binary-mode message")
    return Tick.model_validate_json(body)


def read_structured(payload: bytes | str) -> Tick:
    """A received structured-mode document: attributes checked, ``data`` validated."""
    doc = from_json(payload)
    _checked(doc, "structured-mode message")
    return Tick.model_validate(doc["data"])
