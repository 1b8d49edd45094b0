"""``kafka://`` URL -> :class:`KafkaSettings`, with clear errors for anything unknown.

Shape::

    kafka://[user:password@]host:port[,host:port...][?option=value&...]

Credentials in the userinfo part are the SASL username and password (the same as
``sasl_username``/``sasl_password``). Every error message masks the password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from eventbus.errors import InvalidURLError, mask_url
from eventbus.url_options import (
    OptionParser,
    choice,
    flag,
    host_ports,
    integer,
    mask_query,
    parse_options,
    query_pairs,
    seconds,
    text,
)

from .retry import DEFAULT_TIERS

DEFAULT_PORT = 9092
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
COMPRESSION_TYPES = ("gzip", "snappy", "lz4", "zstd")
ISOLATION_LEVELS = ("read_uncommitted", "read_committed")
# The Python package aiokafka needs for each compression type (gzip is built in).
_COMPRESSION_PACKAGES = {"snappy": "python-snappy", "lz4": "lz4", "zstd": "zstandard"}

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
    # How often clients refresh cluster metadata by themselves: partitions added to a
    # topic are consumed (from their start) within this.
    metadata_max_age_ms: int = 300_000
    compression_type: str | None = None
    isolation_level: str = "read_uncommitted"
    # Static membership: a restarted member with the same id gets its partitions
    # back without a rebalance (within session_timeout_ms).
    group_instance_id: str | None = None
    # The commit cadence (docs/adapters/kafka.md, "Commits"): after an ack, a commit
    # once commit_every records were settled or commit_interval_ms passed. A crash
    # re-runs what was settled since the last commit; each commit is a round trip.
    # max_uncommitted (0: off) holds hand-outs while that many settled records wait
    # for a commit in flight: a bound on re-runs per crash, paid in throughput.
    commit_interval_ms: int = 100
    commit_every: int = 1000
    max_uncommitted: int = 0
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
        values.update(parse_options(
            query_pairs(parts.query, plus_is_space=False), _OPTIONS,
            name="Kafka", shown=masked_, secrets=("sasl_password",),
        ))
        if "max_message_bytes" in values:
            values["max_message_bytes_set"] = True
        _check_sasl(values, masked_)
        if values.get("heartbeat_interval_ms", 3_000) >= values.get("session_timeout_ms", 10_000):
            raise InvalidURLError(
                f"heartbeat_interval_ms must be below session_timeout_ms in {masked_!r}"
            )
        return cls(**values)


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
    return mask_query(mask_url(url), "sasl_password")


def _servers(netloc: str, shown: str) -> tuple[str, ...]:
    servers = host_ports(netloc, default_port=DEFAULT_PORT, name="Kafka", shown=shown)
    if not servers:
        raise InvalidURLError(
            f"Kafka URL {shown!r} names no broker; use kafka://host:port[,host:port]"
        )
    return servers


def _idempotence(raw: str) -> Idempotence:
    if raw.lower() == "auto":
        return "auto"
    try:
        return "true" if flag(raw) else "false"
    except ValueError:
        raise ValueError("use auto, true or false") from None


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

    value = choice(*COMPRESSION_TYPES, fold=str.lower)(raw)
    if not getattr(aiokafka.codec, f"has_{value}")():
        raise ValueError(f"{value} needs the Python package {_COMPRESSION_PACKAGES[value]}; "
                         "install it or choose another compression")
    return value


_OPTIONS: dict[str, OptionParser] = {
    "partitions": integer(1),
    "replication": integer(1),
    "create_topics": flag,
    "client_id": text,
    "security_protocol": choice(*SECURITY_PROTOCOLS, fold=str.upper),
    "sasl_mechanism": choice(*SASL_MECHANISMS, fold=str.upper),
    "sasl_username": text,
    "sasl_password": text,
    "ssl_cafile": text,
    "ssl_certfile": text,
    "ssl_keyfile": text,
    "enable_idempotence": _idempotence,
    "linger_ms": integer(0),
    "mode": choice("binary", "structured", fold=str.lower),
    "batch_bytes": integer(1),
    "max_message_bytes": integer(1),
    "start_from": choice("earliest", "latest"),
    "connect_timeout": seconds(),
    "request_timeout_ms": integer(1),
    "session_timeout_ms": integer(1),
    "heartbeat_interval_ms": integer(1),
    "rebalance_timeout_ms": integer(1),
    "max_poll_interval_ms": integer(1),
    "metadata_max_age_ms": integer(1000),
    "compression_type": _compression,
    "isolation_level": choice(*ISOLATION_LEVELS, fold=str.lower),
    "group_instance_id": text,
    "commit_interval_ms": integer(1),
    "commit_every": integer(1),
    "max_uncommitted": integer(0),
    "rebalance_grace_ms": integer(0),
    "retry_tiers": _tiers,
}
