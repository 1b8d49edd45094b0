"""Envelope <-> Kafka record, in CloudEvents Kafka binary mode.

Attributes travel as ``ce_<name>`` headers (bytes), ``datacontenttype`` as the
``content-type`` header, ``data`` as the value. ``partitionkey`` is the record key
and stays a ``ce_partitionkey`` header too (binding section 3.1); a consumed record
key becomes ``partitionkey`` only when that header is absent and the key is text.
The adapter's own transport facts (retry attempt, not-before time, original topic)
use ``eventbus_*`` headers, which CloudEvents readers ignore.

Decoding never raises: an unreadable record becomes a :class:`Decoded` with
``envelope=None`` and the reason, so one bad record cannot kill a consumer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from eventbus.codec import KAFKA_PREFIX, binary_headers, decode_binary
from eventbus.envelope import Envelope

Headers = list[tuple[str, bytes]]

ATTEMPT_HEADER = "eventbus_attempt"
NOT_BEFORE_HEADER = "eventbus_not_before"
ORIGIN_HEADER = "eventbus_topic"
_TRANSPORT_HEADERS = (ATTEMPT_HEADER, NOT_BEFORE_HEADER, ORIGIN_HEADER)
_PARTITIONKEY_HEADER = KAFKA_PREFIX + "partitionkey"

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


@dataclass(frozen=True, slots=True)
class Decoded:
    """What a consumed record says: the envelope (or why not) and transport facts."""

    envelope: Envelope | None
    error: str | None
    attempt: int
    not_before_ms: int
    origin_topic: str | None


def record_size(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> int:
    """Bytes a record takes in a batch, over-estimated by a few bytes."""
    size = RECORD_OVERHEAD + len(key or b"") + len(value or b"")
    for name, header_value in headers:
        size += PER_HEADER_OVERHEAD + len(name.encode()) + len(header_value or b"")
    return size


def encode(envelope: Envelope) -> KafkaRecord:
    """The binary-mode record for ``envelope``.

    ``partitionkey`` is the record key (so a key always lands on one partition) and
    also stays in the ``ce_partitionkey`` header, as the CloudEvents Kafka binding
    (section 3.1) asks of the extension when the key is set.
    """
    key = envelope.partitionkey.encode("utf-8") if envelope.partitionkey is not None else None
    return KafkaRecord(
        key=key,
        value=envelope.data,
        headers=binary_headers(envelope, KAFKA_PREFIX),
    )


def decode(
    key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes | None]]
) -> Decoded:
    """Read a consumed record; never raises."""
    cloud: list[tuple[str, bytes]] = []
    attempt, not_before, origin = 1, 0, None
    has_partitionkey = False
    for name, header_value in headers:
        raw = header_value or b""
        if name == ATTEMPT_HEADER:
            attempt = max(1, _int(raw, 1))
        elif name == NOT_BEFORE_HEADER:
            not_before = _int(raw, 0)
        elif name == ORIGIN_HEADER:
            origin = raw.decode("utf-8", "replace")
        else:
            has_partitionkey |= name.lower() == _PARTITIONKEY_HEADER
            cloud.append((name, raw))
    try:
        text_key = None if has_partitionkey else _text_key(key)
        envelope: Envelope | None = decode_binary(cloud, value, KAFKA_PREFIX, key=text_key)
        error = None
    except Exception as exc:  # any unreadable record is poison, never a consumer crash
        envelope, error = None, f"{type(exc).__name__}: {exc}"
    return Decoded(envelope, error, attempt, not_before, origin)


def retry_headers(
    headers: Iterable[tuple[str, bytes | None]], *, attempt: int, not_before_ms: int, origin: str
) -> Headers:
    """The original headers with fresh transport headers for a retry record."""
    kept = [(n, v or b"") for n, v in headers if n not in _TRANSPORT_HEADERS]
    kept.append((ATTEMPT_HEADER, str(attempt).encode()))
    kept.append((NOT_BEFORE_HEADER, str(not_before_ms).encode()))
    kept.append((ORIGIN_HEADER, origin.encode("utf-8")))
    return kept


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


def _int(raw: bytes, default: int) -> int:
    try:
        return int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return default
