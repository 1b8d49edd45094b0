"""Envelope <-> Kafka record, in CloudEvents Kafka binary mode.

Attributes travel as ``ce_<name>`` headers (bytes), ``datacontenttype`` as the
``content-type`` header, ``data`` as the value. ``partitionkey`` is the record key
and stays a ``ce_partitionkey`` header too (binding section 3.1); a consumed record
key becomes ``partitionkey`` only when that header is absent and the key is text.
The adapter's own transport facts (retry attempt, not-before time, original topic)
use ``eventbus_*`` headers, which CloudEvents readers ignore.

Decoding never raises: an unreadable record becomes a
:class:`~eventbus.adapter.Decoded` with ``envelope=None``, the reason, and the record's
value and foreign headers, so one bad record cannot kill a consumer and its dead
letter keeps what arrived.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from eventbus.adapter import Decoded
from eventbus.codec import (
    KAFKA_PREFIX,
    STRUCTURED_CONTENT_TYPE,
    binary_size,
    decode_binary,
    decode_structured,
    encode_binary,
    encode_structured,
)
from eventbus.envelope import Envelope

Headers = list[tuple[str, bytes]]

ATTEMPT_HEADER = "eventbus_attempt"
NOT_BEFORE_HEADER = "eventbus_not_before"
ORIGIN_HEADER = "eventbus_topic"
_TRANSPORT_HEADERS = (ATTEMPT_HEADER, NOT_BEFORE_HEADER, ORIGIN_HEADER)
_PARTITIONKEY_HEADER = KAFKA_PREFIX + "partitionkey"
_SPECVERSION_HEADER = KAFKA_PREFIX + "specversion"

# What Kafka adds around a record in a v2 batch (batch header 61 bytes plus the
# per-record varints): generous, so a record we accept is never refused for size.
RECORD_OVERHEAD = 96
PER_HEADER_OVERHEAD = 10


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """A record ready for ``AIOKafkaProducer.send``."""

    key: bytes | None
    value: bytes
    headers: Headers

    @property
    def size(self) -> int:
        """Upper bound of the record's size on the wire, for the max-size check."""
        return record_size(self.key, self.value, self.headers)


def record_size(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> int:
    """Bytes a record takes in a batch, over-estimated by a few bytes."""
    size = RECORD_OVERHEAD + len(key or b"") + len(value or b"")
    for name, header_value in headers:
        size += PER_HEADER_OVERHEAD + len(name.encode()) + len(header_value or b"")
    return size


def encode(envelope: Envelope, *, structured: bool = False) -> KafkaRecord:
    """The record for ``envelope``, in binary mode (or structured mode if asked).

    ``partitionkey`` is the record key (so a key always lands on one partition) and
    also stays in the ``ce_partitionkey`` header, as the CloudEvents Kafka binding
    (section 3.1) asks of the extension when the key is set.
    """
    key, value, headers, _ = encode_parts(envelope, structured)
    return KafkaRecord(key=key, value=value, headers=headers)


_STRUCTURED_HEADERS: Headers = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
_STRUCTURED_HEADER_SIZE = PER_HEADER_OVERHEAD + len("content-type") + len(STRUCTURED_CONTENT_TYPE)


def encode_parts(
    envelope: Envelope, structured: bool = False
) -> tuple[bytes | None, bytes, Headers, int]:
    """``(key, value, headers, size)`` of the record for ``envelope``: the publish path.

    Binary mode: the codec's header dict (one pass over the fields), each value as
    UTF-8 bytes; ``size`` is :func:`record_size` of the result, counted on the
    joined text rather than header by header. Structured mode (the binding's
    section 3.3): the whole event as one JSON value and only a ``content-type``
    header; the key is still the ``partitionkey``.
    """
    partitionkey = envelope.partitionkey
    key = partitionkey.encode() if partitionkey is not None else None
    base = RECORD_OVERHEAD + (len(key) if key is not None else 0)
    if structured:
        value = encode_structured(envelope)
        # A fresh list per record: aiokafka keeps it with the batch.
        return key, value, list(_STRUCTURED_HEADERS), base + len(value) + _STRUCTURED_HEADER_SIZE
    text, value = encode_binary(envelope, KAFKA_PREFIX)
    headers = [(name, header.encode()) for name, header in text.items()]
    size = base + PER_HEADER_OVERHEAD * len(headers) + binary_size(text, value)
    return key, value, headers, size


def decode(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes | None]]
) -> Decoded:
    """Read a consumed record; never raises.

    The headers become a dict of text first, so the codec's lookup fast path reads
    the common record (our own binary mode) without a generic attribute loop.
    """
    attempt, not_before, origin = 1, 0, None
    cloud: dict[str, str | bytes]
    try:
        cloud = {name: raw.decode() if raw else "" for name, raw in headers}
    except (UnicodeDecodeError, AttributeError):
        cloud = _text_headers(headers)
    if ATTEMPT_HEADER in cloud or NOT_BEFORE_HEADER in cloud or ORIGIN_HEADER in cloud:
        text = cloud.pop(ATTEMPT_HEADER, None)
        attempt = 1 if text is None else max(1, _int(text, 1))
        text = cloud.pop(NOT_BEFORE_HEADER, None)
        not_before = 0 if text is None else _int(text, 0)
        text = cloud.pop(ORIGIN_HEADER, None)
        origin = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    try:
        if len(cloud) == 1 and cloud.get("content-type") == STRUCTURED_CONTENT_TYPE:
            # Our structured mode's record (its one header): what decode_binary reads
            # it as, without looking for binary-mode headers first.
            envelope: Envelope | None = decode_structured(value or b"")
        elif _SPECVERSION_HEADER not in cloud and _headerless_structured(cloud, value):
            # The CloudEvents SDK's Kafka structured mode sets no content-type header.
            envelope = decode_structured(value or b"")
        else:
            text_key = None
            if (
                key is not None
                and _PARTITIONKEY_HEADER not in cloud
                and not any(n.lower() == _PARTITIONKEY_HEADER for n in cloud)
            ):
                text_key = _text_key(key)
            envelope = decode_binary(cloud, value, KAFKA_PREFIX, key=text_key)
    except Exception as exc:  # any unreadable record is poison, never a consumer crash
        # Bytes that are no CloudEvent: their dead letter keeps the value and headers.
        return Decoded(
            None,
            f"{type(exc).__name__}: {exc}",
            value or b"",
            foreign_headers(headers),
            attempt,
            not_before,
            origin,
        )
    return Decoded(envelope, None, None, None, attempt, not_before, origin)


def _text_headers(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str | bytes]:
    """The headers of a record whose headers are not all UTF-8 (#18 defect 26).

    Only CloudEvents headers (``ce_*``, ``content-type``) and our transport headers
    are ours to read: a foreign header that is not text (a tracing interceptor's
    binary value) is left out, never a reason to reject the event. One of ours that
    is not text stays bytes, and the codec says which (a poison record).
    """
    cloud: dict[str, str | bytes] = {}
    for name, raw in headers:
        try:
            cloud[name] = raw.decode() if raw else ""
        except (UnicodeDecodeError, AttributeError):
            lowered = name.lower()
            if (
                lowered.startswith(KAFKA_PREFIX)
                or lowered == "content-type"
                or (name in _TRANSPORT_HEADERS)
            ):
                cloud[name] = raw if isinstance(raw, bytes) else str(raw).encode()
    return cloud


def _headerless_structured(cloud: dict[str, str | bytes], value: bytes | None) -> bool:
    """A JSON CloudEvent with no CloudEvents headers at all: structured mode."""
    if not value or value[:1] != b"{" or b'"specversion"' not in value:
        return False
    return not any(n.lower().startswith(KAFKA_PREFIX) or n.lower() == "content-type" for n in cloud)


def retry_headers(
    headers: Iterable[tuple[str, bytes | None]], *, attempt: int, not_before_ms: int, origin: str
) -> Headers:
    """The original headers with fresh transport headers for a retry record."""
    kept = [(n, v or b"") for n, v in headers if n not in _TRANSPORT_HEADERS]
    kept.append((ATTEMPT_HEADER, str(attempt).encode()))
    kept.append((NOT_BEFORE_HEADER, str(not_before_ms).encode()))
    kept.append((ORIGIN_HEADER, origin.encode("utf-8")))
    return kept


def foreign_headers(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, bytes]:
    """A record's headers as a mapping, without this adapter's transport headers: what
    the dead letter of an undecodable record keeps, and what a replay sends again.
    Of a name that occurs more than once the last value is kept."""
    return {name: raw or b"" for name, raw in headers if name not in _TRANSPORT_HEADERS}


def _text_key(key: bytes | str | None) -> str | None:
    """The record key as ``partitionkey`` if it is text; a binary key (Java's
    LongSerializer, UUID bytes) is a transport detail, not a reason to reject the event."""
    if key is None:
        return None
    try:
        text = key if isinstance(key, str) else bytes(key).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def _int(raw: bytes | str, default: int) -> int:
    try:
        return int(raw if isinstance(raw, str) else raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return default
