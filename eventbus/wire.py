"""Wire formats: how an event looks on the broker when the other side is not eventbus.

eventbus speaks CloudEvents (``"cloudevents"``, the default). A topic shared with a
producer or consumer that does not (a FastStream service, a script with the raw
client) needs another layout; a subscription, a publish or the whole bus names it::

    bus = EventBus(url, wire_format="plain")                 # the bus's default
    @bus.subscribe(OrderPlaced, wire_format="plain")         # one subscription
    await bus.publish(event, wire_format="plain")            # one publish

- ``"plain"`` (:class:`Plain`): the body is the event's data (its JSON), nothing else
  is required; the type, id, time and correlation come from headers when there are
  some (see :class:`Plain` for the rules), and a plain publish writes a few
  non-CloudEvents headers (``content-type``, ``message_id``, ``correlation_id``).
- ``"faststream"`` (:class:`FastStream`): plain, plus FastStream's Redis layout (its
  binary frame holding headers and body, in a ``__data__`` stream field on Redis
  Streams, the whole message on Pub/Sub).
- Anything with the :class:`WireFormat` methods: ``decode`` raw bytes and transport
  headers into an :class:`~eventbus.envelope.Envelope`, ``encode`` one into a
  :class:`WireMessage`.

A subscription with a wire format other than ``"cloudevents"`` still accepts
CloudEvents (one topic may carry both while services migrate): only what the adapter
could not read as a CloudEvent goes through the wire format, and what the format
cannot read either is dead-lettered with its raw bytes and the reason.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from eventbus._faststream_frame import is_frame, pack_frame, unpack_frame
from eventbus.envelope import JSON, Envelope
from eventbus.errors import ConfigurationError, DecodeError, UnsupportedOperationError
from eventbus.raw_message import RawMessage

if TYPE_CHECKING:
    from eventbus.adapter import Adapter
    from eventbus.events import Message

__all__ = [
    "FastStream",
    "Incoming",
    "Plain",
    "WireFormat",
    "WireFormatOption",
    "WireMessage",
    "publish_encoded",
    "resolve_wire_format",
]

# The namespace of ids derived from a message's position on the broker.
_ID_NAMESPACE = uuid.UUID("6f1b0c52-6c1e-4f0a-9a7e-2d0f3c1b8e21")
DATA_FIELD = "__data__"
"""The Redis Streams field FastStream keeps its frame in."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """What the core knows of a message beside its bytes, for :meth:`WireFormat.decode`.

    ``message_id`` is the broker's id of the message; ``stable`` says whether it names
    the same message on every redelivery (a Kafka offset, a stream entry id) or not
    (a counter of this connection); ``default_type`` is the event type of the class
    subscribed, when the subscription has exactly one; ``broker`` the adapter's URL
    scheme (``"kafka"``, ``"redis+streams"``...).
    """

    topic: str
    message_id: str = ""
    stable: bool = False
    default_type: str | None = None
    broker: str = ""


@dataclass(frozen=True, slots=True)
class WireMessage:
    """What :meth:`WireFormat.encode` puts on the broker: the body, the transport
    headers (Kafka record headers, AMQP headers, NATS headers, stream fields, SQS
    message attributes) and the partition key (``None``: none)."""

    body: bytes
    headers: dict[str, bytes] = field(default_factory=dict)
    key: str | None = None


@runtime_checkable
class WireFormat(Protocol):
    """A layout of messages on the wire other than CloudEvents.

    ``decode`` raises :class:`~eventbus.errors.DecodeError` (or any exception) for
    bytes it cannot read: the message is dead-lettered with its raw bytes and the
    error as the reason.
    """

    @property
    def name(self) -> str:
        """What dead-letter reasons call this format."""
        ...

    def decode(self, raw: bytes, headers: Mapping[str, bytes], incoming: Incoming) -> Envelope:
        """The envelope of ``raw`` (the body) with its transport ``headers``."""
        ...

    def encode(self, envelope: Envelope, broker: str) -> WireMessage:
        """``envelope`` as the body and headers to send on ``broker`` (a URL scheme)."""
        ...


WireFormatOption = Literal["cloudevents", "plain", "faststream"] | WireFormat


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return bytes(value).decode("utf-8", "replace")


def _trace_id(traceparent: str) -> str | None:
    """The trace id of a W3C ``traceparent`` (``00-<trace id>-<span id>-<flags>``)."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


@dataclass(frozen=True)
class Plain:
    """The body is the event's data; no CloudEvents attribute is needed on the wire.

    Reading a message, the envelope's

    - **type** comes from the header ``type_header`` (when given and present), else
      the body field ``type_field`` (when given), else ``types[topic]`` (a topic bound
      to an event class or type name), else the class subscribed (when the
      subscription has exactly one); otherwise the message is dead-lettered saying so;
    - **id** from the header ``id_header`` (``message_id``, as FastStream and AMQP
      write it), else one derived from the broker's position of the message where it
      is stable across redeliveries (Kafka, JetStream, Redis Streams, SQS, memory,
      SQL), else a new random id: redeliveries of such a message (core NATS, Redis
      Pub/Sub, RabbitMQ without a ``message_id``) are not recognised as duplicates;
    - **time** from the header ``time_header`` (RFC 3339) when given, else now;
    - **correlation** from the first of ``correlation_headers`` present (a W3C
      ``traceparent`` gives its trace id, and is kept as the envelope's traceparent);
    - **source** from the header ``source_header``, else ``source``, else the topic;
    - **partition key** from the header ``key_header`` when given: without one a plain
      message has no key, so a subscription with ``concurrency`` > 1 does not keep
      such messages in order.

    A Redis Streams entry has fields, not a body: its ``body`` field is the body, and
    an entry without one has its fields as the data (``{"order_id": "7"}``, values
    as text: a model field typed ``int`` accepts ``"7"``).

    Publishing, the body is the event's data and the headers are ``content-type``,
    ``id_header`` (the event id), the first correlation header (the correlation id),
    ``traceparent`` when the event has one, and ``type_header`` and ``key_header``
    when given.
    """

    type_header: str | None = None
    type_field: str | None = None
    types: Mapping[str, str | type[Message]] = field(default_factory=dict)
    id_header: str = "message_id"
    time_header: str | None = None
    correlation_headers: tuple[str, ...] = ("correlation_id", "traceparent")
    source_header: str | None = None
    source: str | None = None
    key_header: str | None = None
    name: str = "plain"

    def decode(self, raw: bytes, headers: Mapping[str, bytes], incoming: Incoming) -> Envelope:
        text = {name.lower(): _text(value) for name, value in headers.items()}
        if not raw and headers and "streams" in incoming.broker:
            # A Redis Streams entry without a body field: its fields are the data (as
            # FastStream reads such an entry), their values text.
            raw = json.dumps({name: _text(value) for name, value in headers.items()}).encode()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise DecodeError(
                f"the body is not JSON ({exc}), which wire format {self.name!r} expects"
            ) from None
        event_type = self._type(text, body, incoming)
        event_id = text.get(self.id_header.lower())
        if not event_id:
            if incoming.stable and incoming.message_id:
                position = f"{incoming.broker}:{incoming.message_id}"
                event_id = str(uuid.uuid5(_ID_NAMESPACE, position))
            else:
                event_id = str(uuid.uuid4())
        attributes: dict[str, Any] = {
            "id": event_id,
            "type": event_type,
            "source": (self.source_header and text.get(self.source_header.lower()))
            or self.source
            or incoming.topic,
            "datacontenttype": text.get("content-type") or JSON,
        }
        if self.key_header and text.get(self.key_header.lower()):
            attributes["partitionkey"] = text[self.key_header.lower()]
        if self.time_header and text.get(self.time_header.lower()):
            attributes["time"] = text[self.time_header.lower()]
        for name in self.correlation_headers:
            value = text.get(name.lower())
            if not value:
                continue
            if name.lower() == "traceparent":
                attributes["traceparent"] = value
                value = _trace_id(value) or value
            attributes["correlationid"] = value
            break
        try:
            return Envelope.from_attributes(attributes, raw)
        except (KeyError, ValueError) as exc:
            raise DecodeError(f"wire format {self.name!r}: unreadable header ({exc})") from None

    def _type(self, headers: Mapping[str, str | None], body: Any, incoming: Incoming) -> str:
        if self.type_header:
            found = headers.get(self.type_header.lower())
            if found:
                return found
        if self.type_field and isinstance(body, dict):
            found = body.get(self.type_field)
            if isinstance(found, str) and found:
                return found
        bound = self.types.get(incoming.topic)
        if bound is not None:
            return bound if isinstance(bound, str) else bound.event_type()
        if incoming.default_type:
            return incoming.default_type
        tried = [
            f"header {self.type_header!r}" if self.type_header else "",
            f"field {self.type_field!r}" if self.type_field else "",
        ]
        raise DecodeError(
            f"cannot tell the event type of a {self.name} message on topic "
            f"{incoming.topic!r} (looked for: {', '.join(t for t in tried if t) or 'nothing'}"
            "): the subscription has several classes; name the header or body field "
            "carrying the type (Plain(type_header=...) or Plain(type_field=...)) or bind "
            "the topic to one class (Plain(types={topic: EventClass}))"
        )

    def encode(self, envelope: Envelope, broker: str) -> WireMessage:
        headers: dict[str, bytes] = {
            "content-type": (envelope.datacontenttype or JSON).encode(),
            self.id_header: envelope.id.encode(),
        }
        names = [n for n in self.correlation_headers if n.lower() != "traceparent"]
        if names and envelope.correlationid:
            headers[names[0]] = envelope.correlationid.encode()
        if envelope.traceparent:
            headers["traceparent"] = envelope.traceparent.encode()
        if self.type_header:
            headers[self.type_header] = envelope.type.encode()
        if self.key_header and envelope.partitionkey:
            headers[self.key_header] = envelope.partitionkey.encode()
        return WireMessage(envelope.data, headers, envelope.partitionkey)


@dataclass(frozen=True)
class FastStream(Plain):
    """:class:`Plain` as FastStream 0.7 lays messages out, on every broker both speak.

    On Kafka, RabbitMQ and NATS that is plain (body and headers). On Redis FastStream
    packs the headers and the body into one binary frame: the whole message on
    Pub/Sub (``redis://``), the ``__data__`` field of the entry on Streams
    (``redis+streams://``); this format reads and writes that frame there.
    """

    name: str = "faststream"

    def decode(self, raw: bytes, headers: Mapping[str, bytes], incoming: Incoming) -> Envelope:
        frame = headers.get(DATA_FIELD) if not is_frame(raw) else raw
        if frame is not None and is_frame(frame):
            body, inner = unpack_frame(frame)
            merged = {k: v for k, v in headers.items() if k != DATA_FIELD}
            merged.update((k, v.encode()) for k, v in inner.items())
            return super().decode(body, merged, incoming)
        if frame is not None:  # a __data__ field that is no frame: FastStream's raw data
            return super().decode(frame, headers, incoming)
        return super().decode(raw, headers, incoming)

    def encode(self, envelope: Envelope, broker: str) -> WireMessage:
        plain = super().encode(envelope, broker)
        if not broker.startswith(("redis", "rediss")):
            return plain
        text = {name: value.decode("utf-8", "replace") for name, value in plain.headers.items()}
        frame = pack_frame(plain.body, text)
        if "streams" in broker:
            return WireMessage(b"", {DATA_FIELD: frame}, plain.key)
        return WireMessage(frame, {}, plain.key)


_NAMED: dict[str, WireFormat] = {"plain": Plain(), "faststream": FastStream()}


def resolve_wire_format(value: object, where: str) -> WireFormat | None:
    """The wire format ``value`` names (``None`` for CloudEvents, the adapters' own);
    a :class:`~eventbus.errors.ConfigurationError` naming ``where`` for anything else."""
    if value is None or value == "cloudevents":
        return None
    if isinstance(value, str):
        known = _NAMED.get(value)
        if known is not None:
            return known
    elif isinstance(value, WireFormat):
        return value
    raise ConfigurationError(
        f"{where}: wire_format must be 'cloudevents', 'plain', 'faststream' or an object "
        f"with decode() and encode() (eventbus.wire.WireFormat), not {value!r}"
    )


async def publish_encoded(
    adapter: Adapter, topic: str, envelopes: Sequence[Envelope], wire: WireFormat
) -> None:
    """Publish ``envelopes`` to ``topic`` laid out by ``wire``, one ``publish_raw`` each.

    On a broker whose messages carry no headers (Redis Pub/Sub) the headers are left
    out: they are metadata (id, correlation), the body alone is the event.
    """
    broker = adapter.url.partition("://")[0]
    for envelope in envelopes:
        message = wire.encode(envelope, broker)
        try:
            await adapter.publish_raw(topic, RawMessage(message.body, message.headers, message.key))
        except UnsupportedOperationError:
            if not message.headers or adapter.capabilities.headers:
                raise
            await adapter.publish_raw(topic, RawMessage(message.body, key=message.key))
