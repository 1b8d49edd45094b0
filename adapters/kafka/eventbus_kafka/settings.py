"""``kafka://`` URL -> :class:`KafkaSettings`, with clear errors for anything unknown.

Shape::

    kafka://[user:password@]host:port[,host:port...][?option=value&...]

Credentials in the userinfo part are the SASL username and password (the same as
``sasl_username``/``sasl_password``). Every error message masks the password.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from eventbus.errors import InvalidURLError, mask_url

from .retry import DEFAULT_TIERS

DEFAULT_PORT = 9092
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
COMPRESSION_TYPES = ("gzip", "snappy", "lz4", "zstd")
ISOLATION_LEVELS = ("read_uncommitted", "read_committed")
# The Python package aiokafka needs for each compression type (gzip is built in).
_COMPRESSION_PACKAGES = {"snappy": "python-snappy", "lz4": "lz4", "zstd": "zstandard"}

_QUERY_PASSWORD = re.compile(r"((?:^|[?&])sasl_password=)[^&#]*")

StartFrom = Literal["earliest", "latest"]
Idempotence = Literal["auto", "true", "false"]
Mode = Literal["binary", "structured"]


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Everything the Kafka adapter reads from its URL.

    Example::

        KafkaSettings.from_url("kafka://k1:9092,k2:9092?partitions=6&replication=3")
    """

    url: str = field(repr=False)
    bootstrap_servers: tuple[str, ...]
    partitions: int = 3
    replication: int = 1
    create_topics: bool = True
    client_id: str = "eventbus"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    # "auto": the idempotent producer (no duplicate records when a produce request
    # is retried), unless the broker lacks it (InitProducerId fails): then off,
    # with a warning. "true" makes that an error; "false" turns it off.
    enable_idempotence: Idempotence = "auto"
    linger_ms: int = 5
    # CloudEvents content mode of published records: "binary" (attributes as ce_
    # headers, data as the value) or "structured" (one JSON value, a content-type
    # header only). Consumers read both, whatever this says.
    mode: Mode = "binary"
    # CloudEvents headers make records ~5x larger than a bare payload; aiokafka's
    # 16 KiB default batch would then stall publishers on many small produce requests.
    batch_bytes: int = 512 * 1024
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_message_bytes_set: bool = False
    start_from: StartFrom | None = None
    connect_timeout: float = 5.0
    request_timeout_ms: int = 30_000
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    rebalance_timeout_ms: int = 10_000
    # A member that does not poll for this long leaves its group; the subscription
    # keeps polling (partitions paused) while its handlers are busy.
    max_poll_interval_ms: int = 300_000
    compression_type: str | None = None
    isolation_level: str = "read_uncommitted"
    # Static membership: a restarted member with the same id gets its partitions
    # back without a rebalance (within session_timeout_ms).
    group_instance_id: str | None = None
    commit_interval_ms: int = 100
    rebalance_grace_ms: int = 2_000
    # Delay tiers in seconds, ascending: one retry topic each (see eventbus_kafka.retry).
    retry_tiers: tuple[int, ...] = DEFAULT_TIERS

    @property
    def masked_url(self) -> str:
        """The URL with any password (userinfo or ``sasl_password``) replaced by ``***``."""
        return masked(self.url)

    @classmethod
    def from_url(cls, url: str) -> KafkaSettings:
        """Parse ``url``; raise :class:`InvalidURLError` naming what is wrong."""
        masked_ = masked(url)
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise InvalidURLError(f"cannot parse Kafka URL {masked_!r}: {exc}") from exc
        if parts.scheme != "kafka":
            raise InvalidURLError(
                f"the Kafka adapter got {masked_!r}; use kafka://host:port[,host:port]"
            )
        netloc = parts.netloc
        username = password = None
        if "@" in netloc:
            userinfo, netloc = netloc.rsplit("@", 1)
            name, _, secret = userinfo.partition(":")
            username = unquote(name) or None
            password = unquote(secret) or None
        servers = _servers(netloc, masked_)
        values: dict[str, Any] = {"url": url, "bootstrap_servers": servers}
        if username is not None:
            values["sasl_username"] = username
        if password is not None:
            values["sasl_password"] = password
        seen: set[str] = set()
        for name, raw in _query(parts.query):
            parser = _OPTIONS.get(name)
            if parser is None:
                raise InvalidURLError(
                    f"unknown option {name!r} in Kafka URL {masked_!r}; the Kafka adapter "
                    f"accepts: {', '.join(sorted(_OPTIONS))}"
                )
            if name in seen:
                raise InvalidURLError(f"option {name!r} is given twice in {masked_!r}")
            seen.add(name)
            try:
                values[name] = parser(raw)
            except ValueError as exc:
                shown = "***" if name == "sasl_password" else repr(raw)
                raise InvalidURLError(
                    f"option {name}={shown} in Kafka URL {masked_!r} is invalid: {exc}"
                ) from exc
        if "max_message_bytes" in values:
            values["max_message_bytes_set"] = True
        _check_sasl(values, masked_)
        if values.get("heartbeat_interval_ms", 3_000) >= values.get("session_timeout_ms", 10_000):
            raise InvalidURLError(
                f"heartbeat_interval_ms must be below session_timeout_ms in {masked_!r}"
            )
        return cls(**values)


def _query(query: str) -> list[tuple[str, str]]:
    """``name=value`` pairs, percent-decoded; unlike ``parse_qsl``, ``+`` stays a plus
    (a password like ``a+b`` must not become ``a b``)."""
    pairs: list[tuple[str, str]] = []
    for item in query.split("&"):
        if item:
            name, _, value = item.partition("=")
            pairs.append((unquote(name), unquote(value)))
    return pairs


def _check_sasl(values: dict[str, Any], shown: str) -> None:
    """Credentials and the security protocol must agree, or the login is dropped."""
    protocol = values.get("security_protocol", "PLAINTEXT")
    sasl = protocol.startswith("SASL")
    given = [n for n in ("sasl_mechanism", "sasl_username", "sasl_password") if n in values]
    if given and not sasl:
        raise InvalidURLError(
            f"{', '.join(given)} given in {shown!r} but security_protocol is {protocol}, "
            "which sends no login; set security_protocol=SASL_SSL (or SASL_PLAINTEXT)"
        )
    missing = [n for n in ("sasl_username", "sasl_password") if n not in values]
    if sasl and missing:
        raise InvalidURLError(
            f"security_protocol={protocol} in {shown!r} needs a login but "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing; "
            "give user:password@ in the URL or the sasl_username/sasl_password options"
        )


def masked(url: str) -> str:
    """``url`` safe to show: :func:`eventbus.errors.mask_url` plus the query password."""
    return _QUERY_PASSWORD.sub(r"\1***", mask_url(url))


def _servers(netloc: str, shown: str) -> tuple[str, ...]:
    servers: list[str] = []
    for item in netloc.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # IPv6 literal: [::1]:9092
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        if not host:
            raise InvalidURLError(f"Kafka URL {shown!r} has an empty host in {item!r}")
        port = DEFAULT_PORT
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise InvalidURLError(f"Kafka URL {shown!r} has an invalid port in {item!r}")
            port = int(port_text)
        servers.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if not servers:
        raise InvalidURLError(
            f"Kafka URL {shown!r} names no broker; use kafka://host:port[,host:port]"
        )
    return tuple(servers)


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be zero or more")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _text(raw: str) -> str:
    if not raw:
        raise ValueError("must not be empty")
    return raw


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.upper()
        if value not in allowed:
            raise ValueError(f"use one of {', '.join(allowed)}")
        return value

    return parse


def _start_from(raw: str) -> StartFrom:
    if raw == "earliest":
        return "earliest"
    if raw == "latest":
        return "latest"
    raise ValueError("use earliest or latest")


def _idempotence(raw: str) -> Idempotence:
    lowered = raw.lower()
    if lowered == "auto":
        return "auto"
    if lowered in ("1", "true", "yes", "on"):
        return "true"
    if lowered in ("0", "false", "no", "off"):
        return "false"
    raise ValueError("use auto, true or false")


def _tiers(raw: str) -> tuple[int, ...]:
    try:
        tiers = tuple(int(part) for part in raw.split(","))
    except ValueError:
        raise ValueError("use ascending whole seconds separated by commas, e.g. 1,10,60") from None
    if not 1 <= len(tiers) <= 10 or tiers[0] < 1 or list(tiers) != sorted(set(tiers)):
        raise ValueError("use 1 to 10 ascending whole seconds (at least 1), e.g. 1,10,60")
    return tiers


def _compression(raw: str) -> str:
    import aiokafka.codec

    value = raw.lower()
    if value not in COMPRESSION_TYPES:
        raise ValueError(f"use one of {', '.join(COMPRESSION_TYPES)}")
    if not getattr(aiokafka.codec, f"has_{value}")():
        raise ValueError(f"{value} needs the Python package {_COMPRESSION_PACKAGES[value]}; "
                         "install it or choose another compression")
    return value


def _isolation(raw: str) -> str:
    value = raw.lower()
    if value not in ISOLATION_LEVELS:
        raise ValueError(f"use one of {', '.join(ISOLATION_LEVELS)}")
    return value


def _mode(raw: str) -> str:
    value = raw.lower()
    if value not in ("binary", "structured"):
        raise ValueError("use binary or structured")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("use true or false")


_OPTIONS: dict[str, Callable[[str], Any]] = {
    "partitions": _positive_int,
    "replication": _positive_int,
    "create_topics": _bool,
    "client_id": _text,
    "security_protocol": _choice(*SECURITY_PROTOCOLS),
    "sasl_mechanism": _choice(*SASL_MECHANISMS),
    "sasl_username": _text,
    "sasl_password": _text,
    "ssl_cafile": _text,
    "ssl_certfile": _text,
    "ssl_keyfile": _text,
    "enable_idempotence": _idempotence,
    "linger_ms": _non_negative_int,
    "mode": _mode,
    "batch_bytes": _positive_int,
    "max_message_bytes": _positive_int,
    "start_from": _start_from,
    "connect_timeout": _positive_float,
    "request_timeout_ms": _positive_int,
    "session_timeout_ms": _positive_int,
    "heartbeat_interval_ms": _positive_int,
    "rebalance_timeout_ms": _positive_int,
    "max_poll_interval_ms": _positive_int,
    "compression_type": _compression,
    "isolation_level": _isolation,
    "group_instance_id": _text,
    "commit_interval_ms": _positive_int,
    "rebalance_grace_ms": _non_negative_int,
    "retry_tiers": _tiers,
}
