"""Envelope <-> Kafka record, in CloudEvents Kafka binary mode.

Attributes travel as ``ce_<name>`` headers (bytes), ``datacontenttype`` as the
``content-type`` header, ``partitionkey`` as the record key, ``data`` as the
value. The adapter's own transport facts (retry attempt, not-before time,
original topic) use ``eventbus_*`` headers, which CloudEvents readers ignore.

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

    ``partitionkey`` goes only into the record key, as the CloudEvents Kafka
    binding says; :func:`decode` puts it back.
    """
    key = envelope.partitionkey.encode("utf-8") if envelope.partitionkey is not None else None
    omit = ("partitionkey",) if key is not None else ()
    return KafkaRecord(
        key=key,
        value=envelope.data,
        headers=binary_headers(envelope, KAFKA_PREFIX, omit=omit),
    )


def decode(
    key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes | None]]
) -> Decoded:
    """Read a consumed record; never raises."""
    cloud: list[tuple[str, bytes]] = []
    attempt, not_before, origin = 1, 0, None
    for name, header_value in headers:
        raw = header_value or b""
        if name == ATTEMPT_HEADER:
            attempt = max(1, _int(raw, 1))
        elif name == NOT_BEFORE_HEADER:
            not_before = _int(raw, 0)
        elif name == ORIGIN_HEADER:
            origin = raw.decode("utf-8", "replace")
        else:
            cloud.append((name, raw))
    try:
        envelope: Envelope | None = decode_binary(cloud, value, KAFKA_PREFIX, key=key)
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


def _int(raw: bytes, default: int) -> int:
    try:
        return int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return default
