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
    TLS_OPTIONS,
    OptionParser,
    Renamed,
    check_tls,
    choice,
    delay_tiers,
    flag,
    from_milliseconds,
    host_ports,
    integer,
    mask_query,
    parse_options,
    query_pairs,
    seconds,
    shared,
    text,
)

DEFAULT_PORT = 9092
# Delay tiers (seconds): one retry topic each (eventbus_kafka.provision).
DEFAULT_TIERS: tuple[float, ...] = (1, 10, 60, 600, 3600)
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
    """Everything the Kafka adapter reads from its URL (durations in seconds).

    Example::

        KafkaSettings.from_url("kafka://k1:9092,k2:9092?partitions=6&replication=3")
        KafkaSettings(bootstrap_servers=("k1:9092",), client_name="billing")  # in code
    """

    bootstrap_servers: tuple[str, ...] = (f"127.0.0.1:{DEFAULT_PORT}",)
    url: str = field(default="", repr=False)
    partitions: int = 3
    replication: int = 1
    # Create topics (and retry topics) on first use; false: a missing one is a
    # ProvisioningError (for clusters where the service account may not create topics).
    provision: bool = True
    client_name: str = "eventbus"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_verify: bool = True
    # "auto": the idempotent producer (no duplicate records when a produce request
    # is retried), unless the broker lacks it (InitProducerId fails): then off,
    # with a warning. "true" makes that an error; "false" turns it off.
    enable_idempotence: Idempotence = "auto"
    linger: float = 0.005
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
    request_timeout: float = 30.0
    session_timeout: float = 10.0
    heartbeat_interval: float = 3.0
    rebalance_timeout: float = 10.0
    # A member that does not poll for this long leaves its group; the subscription
    # keeps polling (partitions paused) while its handlers are busy.
    max_poll_interval: float = 300.0
    # How often clients refresh cluster metadata by themselves: partitions added to a
    # topic are consumed (from their start) within this.
    metadata_max_age: float = 300.0
    compression_type: str | None = None
    isolation_level: str = "read_uncommitted"
    # Static membership: a restarted member with the same id gets its partitions
    # back without a rebalance (within session_timeout).
    group_instance_id: str | None = None
    # The commit cadence (docs/adapters/kafka.md, "Commits"): one commit in flight,
    # the next once commit_every records were settled or commit_interval passed. A
    # crash re-runs what was settled since the last finished commit: the handling
    # rate times the commit round trip (on Kafka 4.x mostly the broker's 5 ms
    # group.coordinator.append.linger.ms).
    # max_uncommitted (0: off) holds hand-outs while that many settled records wait
    # for a commit in flight: a bound on re-runs per crash, paid in throughput.
    commit_interval: float = 0.1
    commit_every: int = 32
    max_uncommitted: int = 0
    rebalance_grace: float = 2.0
    # Delay tiers in seconds, ascending: one retry topic each (see eventbus_kafka.provision).
    delay_tiers: tuple[float, ...] = DEFAULT_TIERS

    def __post_init__(self) -> None:
        if self.heartbeat_interval >= self.session_timeout:
            raise InvalidURLError(
                f"heartbeat_interval ({self.heartbeat_interval:g}s) must be below "
                f"session_timeout ({self.session_timeout:g}s) in {self.masked_url!r}"
            )

    @property
    def masked_url(self) -> str:
        """The URL with any password (userinfo or ``sasl_password``) replaced by ``***``
        (for settings made in code, ``kafka://`` and the bootstrap servers)."""
        return masked(self.url) if self.url else f"kafka://{','.join(self.bootstrap_servers)}"

    @property
    def tls(self) -> bool:
        """Whether the security protocol is TLS (``SSL`` or ``SASL_SSL``)."""
        return self.security_protocol in ("SSL", "SASL_SSL")

    def ms(self, seconds: float) -> int:
        """``seconds`` as the whole milliseconds aiokafka's options take."""
        return round(seconds * 1000)

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
        values.update(
            parse_options(
                query_pairs(parts.query, plus_is_space=False),
                _OPTIONS,
                name="Kafka",
                shown=masked_,
                secrets=("sasl_password",),
                renamed=RENAMED,
            )
        )
        if "max_message_bytes" in values:
            values["max_message_bytes_set"] = True
        _check_sasl(values, masked_)
        check_tls(
            values,
            tls=values.get("security_protocol", "PLAINTEXT") in ("SSL", "SASL_SSL"),
            name="Kafka",
            shown=masked_,
            use="set security_protocol=SSL (or SASL_SSL with a login)",
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


def _compression(raw: str) -> str:
    import aiokafka.codec

    value = choice(*COMPRESSION_TYPES, fold=str.lower)(raw)
    if not getattr(aiokafka.codec, f"has_{value}")():
        raise ValueError(
            f"{value} needs the Python package {_COMPRESSION_PACKAGES[value]}; "
            "install it or choose another compression"
        )
    return value


_OPTIONS: dict[str, OptionParser] = {
    **shared("start_from", "client_name", "provision", "connect_timeout", *TLS_OPTIONS),
    # One retry topic per tier: at most ten, so a group's subscription reads eleven topics.
    "delay_tiers": delay_tiers(most=10),
    "partitions": integer(1),
    "replication": integer(1),
    "security_protocol": choice(*SECURITY_PROTOCOLS, fold=str.upper),
    "sasl_mechanism": choice(*SASL_MECHANISMS, fold=str.upper),
    "sasl_username": text,
    "sasl_password": text,
    "enable_idempotence": _idempotence,
    "linger": seconds(inclusive=True),
    "mode": choice("binary", "structured", fold=str.lower),
    "batch_bytes": integer(1),
    "max_message_bytes": integer(1),
    "request_timeout": seconds(),
    "session_timeout": seconds(),
    "heartbeat_interval": seconds(),
    "rebalance_timeout": seconds(),
    "max_poll_interval": seconds(),
    "metadata_max_age": seconds(1, inclusive=True),
    "compression_type": _compression,
    "isolation_level": choice(*ISOLATION_LEVELS, fold=str.lower),
    "group_instance_id": text,
    "commit_interval": seconds(),
    "commit_every": integer(1),
    "max_uncommitted": integer(0),
    "rebalance_grace": seconds(inclusive=True),
}

# The names of 0.1, still parsed (with a DeprecationWarning) until eventbus 0.2.
RENAMED: dict[str, Renamed] = {
    "client_id": Renamed("client_name"),
    "create_topics": Renamed("provision"),
    "ssl_cafile": Renamed("tls_ca"),
    "ssl_certfile": Renamed("tls_cert"),
    "ssl_keyfile": Renamed("tls_key"),
    "retry_tiers": Renamed("delay_tiers"),
    **{
        f"{name}_ms": Renamed(name, from_milliseconds(integer(low)), "seconds")
        for name, low in (
            ("linger", 0),
            ("request_timeout", 1),
            ("session_timeout", 1),
            ("heartbeat_interval", 1),
            ("rebalance_timeout", 1),
            ("max_poll_interval", 1),
            ("metadata_max_age", 1000),
            ("commit_interval", 1),
            ("rebalance_grace", 0),
        )
    },
}
