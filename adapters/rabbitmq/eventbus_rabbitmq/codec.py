"""Envelope <-> AMQP 0-9-1 message, in the CloudEvents RabbitMQ binary mode.

The binding the official SDK implements (``cloudevents.core.bindings.rabbitmq``):
attributes travel as ``ce-<name>`` string headers, ``datacontenttype`` as the
``content_type`` property and ``data`` as the body. The adapter's own transport
facts (attempt, not-before time) use ``x-eventbus-*`` headers, which CloudEvents
readers ignore; the broker's own headers (``x-death``, ``x-delivery-count``) are
read for the attempt count and never decoded as attributes.

Read as well: the CloudEvents AMQP binding's application properties (AMQP 1.0
clients through RabbitMQ, the SDK's ``amqp`` binding), named ``cloudEvents_<name>``
or ``cloudEvents:<name>``, with native AMQP values (a timestamp, or a long of
milliseconds, for ``time``; booleans and integers as their canonical text). A
``ce-`` header wins over the same attribute under an AMQP prefix.

Written instead of ``ce-`` headers with ``binding=amqp``: the AMQP binding's
``cloudEvents_`` properties (the separator the spec prefers, for JMS), every value
an AMQP string. eventbus's attributes are all strings or URIs (``dataversion`` and
extensions included) but ``time``, which goes as its canonical RFC 3339 text: the
spec allows it beside the native timestamp, every reader must accept it, and AMQP
0-9-1 has no millisecond timestamp (its ``timestamp`` field holds whole seconds),
so the native form would drop the sub-second part.

Decoding never raises: an unreadable message becomes a
:class:`~eventbus.adapter.Decoded` with ``envelope=None``, the reason, its body and
the producer's headers, so one bad message cannot kill a consumer and its dead letter
keeps what arrived.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractIncomingMessage

from eventbus.adapter import Decoded
from eventbus.codec import decode_binary, encode_binary
from eventbus.envelope import Envelope, format_time
from eventbus.errors import DecodeError

from .settings import Binding

CE_PREFIX = "ce-"
"""Attribute header prefix of the CloudEvents RabbitMQ binding."""
AMQP_PREFIXES = ("cloudEvents_", "cloudEvents:")
"""Application-property prefixes of the CloudEvents AMQP binding (the first is written)."""
_AMQP_LOWER = tuple(prefix.lower() for prefix in AMQP_PREFIXES)
_AMQP_SKIP = len(AMQP_PREFIXES[0])
REASON_NAMES_LIMIT = 300
"""Most characters of header names a dead letter's reason lists."""
ATTEMPT_HEADER = "x-eventbus-attempt"
NOT_BEFORE_HEADER = "x-eventbus-not-before"
RECOUNT_HEADER = "x-eventbus-recount"
"""Marks the copy that counted a classic queue's redelivery (consumer.py)."""
_TRANSPORT_HEADERS = (ATTEMPT_HEADER, NOT_BEFORE_HEADER, RECOUNT_HEADER)
# Basic properties and frame overhead around a message: generous, so a message we
# accept is never refused by the broker for its size. It also covers the transport
# headers a retry adds (not counted below), so a message accepted by publish() is
# never refused for its size when nack() parks it.
MESSAGE_OVERHEAD = 256
PER_HEADER_OVERHEAD = 8


@dataclass(frozen=True, slots=True)
class AmqpMessage:
    """A message ready for ``aio_pika.Message``: headers, content type and body."""

    headers: dict[str, Any]
    content_type: str | None
    body: bytes

    @property
    def size(self) -> int:
        """Upper bound of the message's size on the wire, for the max-size check."""
        return message_size(self.headers, self.content_type, self.body)


def message_size(headers: Mapping[str, Any], content_type: str | None, body: bytes) -> int:
    """Bytes the message takes: body, header names and values, content type, overhead."""
    size = MESSAGE_OVERHEAD + len(body) + len((content_type or "").encode())
    for name, value in headers.items():
        if name in _TRANSPORT_HEADERS:
            continue  # inside MESSAGE_OVERHEAD
        size += PER_HEADER_OVERHEAD + len(name.encode())
        size += len(value) if isinstance(value, bytes) else len(str(value).encode())
    return size


def encode(envelope: Envelope, binding: Binding = "rabbitmq") -> AmqpMessage:
    """The binary-mode message for ``envelope`` (``content-type`` moves to the property),
    its attributes as ``ce-`` headers or, for ``binding="amqp"``, ``cloudEvents_``
    properties."""
    prefix = AMQP_PREFIXES[0] if binding == "amqp" else CE_PREFIX
    headers, body = encode_binary(envelope, prefix)
    content_type = headers.pop("content-type", None)
    return AmqpMessage(dict(headers), content_type, body)


def decode(headers: Mapping[str, Any] | None, content_type: str | None, body: bytes) -> Decoded:
    """Read a consumed message; never raises.

    Only ``ce-`` headers and the AMQP binding's properties are decoded: a header
    the bindings do not define (the broker's ``x-death`` table, a producer's binary
    header) never makes a valid CloudEvent poison. A message that is no CloudEvent
    says so, naming the headers it had.
    """
    cloud: dict[str, str] = {}
    amqp: dict[str, str] = {}
    attempt, not_before = 1, 0
    try:
        for name, value in (headers or {}).items():
            if name == ATTEMPT_HEADER:
                attempt = max(1, _int(value, 1))
            elif name == NOT_BEFORE_HEADER:
                not_before = _int(value, 0)
            else:
                lowered = name.lower()
                if lowered.startswith(CE_PREFIX):
                    cloud[lowered] = _text(value)
                elif lowered.startswith(_AMQP_LOWER):
                    attribute = lowered[_AMQP_SKIP:]
                    amqp[CE_PREFIX + attribute] = _amqp_text(attribute, value)
        for name, text in amqp.items():
            cloud.setdefault(name, text)
        if content_type is not None:
            cloud["content-type"] = content_type
        structured = (content_type or "").lower().startswith("application/cloudevents")
        if not structured and "ce-specversion" not in cloud:
            raise DecodeError(not_a_cloudevent(headers, content_type))
        envelope = decode_binary(cloud, body, CE_PREFIX)
    except Exception as exc:  # any unreadable message is poison, never a consumer crash
        return Decoded(
            None,
            f"{type(exc).__name__}: {exc}",
            body,
            raw_headers(headers, content_type),
            attempt,
            not_before,
        )
    return Decoded(envelope, None, None, None, attempt, not_before)


# The broker's and the adapter's own headers: never part of what a producer sent.
_BROKER_HEADERS = ("x-death", "x-delivery-count", "x-first-death-", "x-last-death-")


def _producer_headers(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    return {
        k: v
        for k, v in (headers or {}).items()
        if k not in _TRANSPORT_HEADERS and not k.startswith(_BROKER_HEADERS)
    }


def retry_headers(
    headers: Mapping[str, Any] | None, *, attempt: int, not_before_ms: int
) -> dict[str, Any]:
    """The producer's headers with fresh transport headers for a parked retry.

    The broker's headers are dropped: ``x-death`` grows by one entry per trip through
    a delay queue and says nothing the attempt header does not, and a copy carrying
    the original's ``x-delivery-count`` would have it counted into its attempt again.
    """
    kept = _producer_headers(headers)
    kept[ATTEMPT_HEADER] = attempt
    kept[NOT_BEFORE_HEADER] = not_before_ms
    return kept


def raw_headers(headers: Mapping[str, Any] | None, content_type: str | None) -> dict[str, bytes]:
    """A message's headers as a producer set them, values as bytes (text as UTF-8),
    the ``content_type`` property as ``content-type``: what a foreign message's dead
    letter keeps, and what :func:`raw_message` puts back on a replay."""
    kept: dict[str, bytes] = {}
    for name, value in _producer_headers(headers).items():
        if isinstance(value, bytes | bytearray):
            kept[name] = bytes(value)
        else:
            kept[name] = (value if isinstance(value, str) else str(value)).encode()
    if content_type is not None:
        kept["content-type"] = content_type.encode()
    return kept


# AMQP message properties a producer sets, kept beside the headers of a message that is
# not a CloudEvent (FastStream sets correlation_id and message_id) and put back.
PROPERTIES = ("correlation_id", "message_id", "type", "app_id")


def raw_message(payload: bytes, headers: Mapping[str, bytes] | None) -> Message:
    """A persistent message of ``payload`` whose AMQP headers are ``headers`` (bytes, as
    a foreign producer's binary header travels); ``content-type`` and the
    :data:`PROPERTIES` (text) become the message properties."""
    table: dict[str, Any] = {}
    content_type: str | None = None
    properties: dict[str, str] = {}
    for name, value in (headers or {}).items():
        if name == "content-type":
            content_type = bytes(value).decode("utf-8", "replace")
            continue
        if name in PROPERTIES:
            properties[name] = bytes(value).decode("utf-8", "replace")
            continue
        try:  # text travels as an AMQP long string, as other producers send it
            table[name] = bytes(value).decode("utf-8")
        except UnicodeDecodeError:  # anything else as a byte array, kept exactly
            table[name] = bytearray(value)
    return Message(
        payload,
        headers=table or None,
        content_type=content_type,
        delivery_mode=DeliveryMode.PERSISTENT,
        **properties,  # type: ignore[arg-type]
    )


def copy_message(message: AbstractIncomingMessage, headers: Mapping[str, Any]) -> Message:
    """A persistent copy of a consumed message with ``headers``, every property kept but
    ``user_id`` (the broker checks it against the connection's user)."""
    return Message(
        message.body,
        headers=dict(headers),
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=DeliveryMode.PERSISTENT,
        priority=message.priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        expiration=message.expiration,
        message_id=message.message_id,
        timestamp=message.timestamp,
        type=message.type,
        app_id=message.app_id,
    )


def recounted(headers: Mapping[str, Any] | None, attempt: int, token: str) -> dict[str, Any]:
    """The producer's ``headers`` with the attempt header set to ``attempt`` and the
    recount mark (``x-eventbus-not-before`` dropped: the message is due already)."""
    return {**_producer_headers(headers), ATTEMPT_HEADER: attempt, RECOUNT_HEADER: token}


def not_a_cloudevent(headers: Mapping[str, Any] | None, content_type: str | None) -> str:
    """Why a message is no CloudEvent, naming the headers it had (names only, at most
    :data:`REASON_NAMES_LIMIT` characters of them)."""
    names = sorted(str(name) for name in _producer_headers(headers))
    listed: list[str] = []
    size = 0
    for name in names:
        size += len(name) + 2
        if size > REASON_NAMES_LIMIT:
            listed.append(f"... {len(names) - len(listed)} more")
            break
        listed.append(name)
    return (
        "not a CloudEvent: no ce-specversion header (RabbitMQ binding) nor "
        "cloudEvents_specversion / cloudEvents:specversion (AMQP binding), and content "
        f"type {content_type!r} is not application/cloudevents (structured mode); "
        f"headers: [{', '.join(listed)}]"
    )


def _amqp_text(attribute: str, value: Any) -> str:
    """An AMQP binding value as its canonical CloudEvents text: ``time`` as a
    timestamp or a long of milliseconds since the epoch; booleans ``true``/``false``."""
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and attribute == "time":
        return format_time(datetime.fromtimestamp(value / 1000, tz=UTC))
    return _text(value)


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8")  # a ce- header that is not UTF-8 is poison
    return value if isinstance(value, str) else str(value)


def _int(value: Any, default: int) -> int:
    try:
        return int(value.decode("ascii") if isinstance(value, bytes | bytearray) else value)
    except (UnicodeDecodeError, ValueError, TypeError):
        return default
