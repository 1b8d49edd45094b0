"""``amqp://`` / ``amqps://`` URL -> :class:`RabbitMQSettings`, with clear errors.

Shape::

    amqp[s]://[user:password@]host[:port][,host[:port]...][/vhost][?option=value&...]

Several hosts are the nodes of one cluster: the first connect tries them in turn,
and a lost connection is re-established to the next one.

The virtual host is the URL path, percent-decoded (``/`` is ``%2F``; an empty path
is the default vhost ``/``). Every error message masks the password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from eventbus.adapter import StartFrom
from eventbus.errors import InvalidURLError, mask_url
from eventbus.url_options import (
    TLS_OPTIONS,
    OptionParser,
    Renamed,
    check_tls,
    choice,
    host_ports,
    integer,
    parse_options,
    query_pairs,
    seconds,
    shared,
    strict_flag,
)

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
# RabbitMQ 3.13 refuses messages over 128 MiB (max_message_size, 16 MiB on 4.x).
BROKER_MAX_MESSAGE_BYTES = 128 * 1024 * 1024
# Delay tiers (seconds): nack(delay) parks a message in the smallest tier that is at
# least the delay, so a delay is never shortened, and each tier queue holds messages
# of one TTL only, so a long delay never blocks a short one.
DEFAULT_DELAY_TIERS = (0.05, 0.2, 1, 5, 30, 120, 600, 3600)

QueueType = Literal["classic", "quorum"]
Binding = Literal["rabbitmq", "amqp"]
"""The CloudEvents binding a publisher writes: ``rabbitmq`` (``ce-`` headers, the
SDK's ``rabbitmq`` binding) or ``amqp`` (``cloudEvents_`` properties). Both are read."""
BINDINGS: tuple[Binding, ...] = ("rabbitmq", "amqp")


@dataclass(frozen=True, slots=True)
class RabbitMQSettings:
    """Everything the RabbitMQ adapter reads from its URL (durations in seconds).

    Example::

        RabbitMQSettings.from_url("amqps://app:secret@mq.example.com/orders?queue_type=quorum")
        RabbitMQSettings(host="mq.example.com", tls=True, client_name="billing")  # in code
    """

    host: str = "127.0.0.1"
    port: int = 0  # 0: AMQP's own (5671 with TLS, else 5672)
    # Further nodes of the cluster (host:port), tried after host:port in turn.
    more_hosts: tuple[str, ...] = ()
    tls: bool = False
    url: str = field(default="", repr=False)
    username: str = "guest"
    password: str = field(default="guest", repr=False)
    vhost: str = "/"
    queue_type: QueueType = "classic"
    single_active_consumer: bool = False
    mandatory: bool = True
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # A listener that accepts TCP and never speaks AMQP fails the connect after this.
    connect_timeout: float = 5.0
    # Short enough that a connection which went silent without closing (a frozen NAT
    # entry, a pulled cable) is noticed within ~20 s; RabbitMQ advises 5 to 20 s.
    heartbeat: int = 5
    publish_timeout: float = 30.0
    reconnect_interval: float = 1.0
    delay_tiers: tuple[float, ...] = DEFAULT_DELAY_TIERS
    client_name: str = "eventbus"
    auth_mechanism: str = "PLAIN"
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_verify: bool = True
    # Declare exchanges and queues on first use; false: a missing one is a
    # ProvisioningError (the topology is managed elsewhere).
    provision: bool = True
    # Where a new group starts when its subscription does not say; a queue holds only
    # what arrived after it was declared, so "earliest" starts there too.
    start_from: StartFrom | None = None
    # The CloudEvents binding published messages follow (consumers read both).
    binding: Binding = "rabbitmq"

    def __post_init__(self) -> None:
        if self.binding not in BINDINGS:
            raise ValueError(f"RabbitMQSettings(binding={self.binding!r}): use rabbitmq or amqp")
        if self.port == 0:
            object.__setattr__(self, "port", 5671 if self.tls else 5672)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node to try: ``host:port`` first."""
        out = [(self.host, self.port)]
        for server in self.more_hosts:
            host, _, port = server.rpartition(":")
            out.append((host.strip("[]"), int(port)))
        return out

    @property
    def masked_url(self) -> str:
        """The URL with its password masked, for messages and logs (for settings made
        in code, ``amqp[s]://host:port/vhost`` without the login)."""
        if self.url:
            return mask_url(self.url)
        vhost = quote(self.vhost, safe="") if self.vhost != "/" else ""
        return f"amqp{'s' if self.tls else ''}://{self.host}:{self.port}/{vhost}"

    def scrub(self, text: str) -> str:
        """``text`` (a client's error message) with the password, raw or percent-encoded,
        replaced by ``***``: nothing the adapter raises or logs may carry it."""
        for secret in {self.password, quote(self.password, safe="")}:
            if len(secret) >= 3 and secret != "guest":  # the default tells nothing
                text = text.replace(secret, "***")
        return text

    @classmethod
    def from_url(cls, url: str) -> RabbitMQSettings:
        """Parse and validate ``url``; raise :class:`InvalidURLError` naming the problem."""
        masked = mask_url(url)
        _check_userinfo(url, masked)
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise InvalidURLError(
                f"RabbitMQ adapter got {masked!r}; use amqp://host:5672/vhost or amqps://..."
            )
        if not parts.hostname:
            raise InvalidURLError(f"{masked!r} names no host; use amqp://host:5672/vhost")
        tls = parts.scheme == "amqps"
        netloc = parts.netloc.rpartition("@")[2]
        more: tuple[str, ...] = ()
        if "," in netloc:
            nodes = host_ports(
                netloc, default_port=5671 if tls else 5672, name="RabbitMQ", shown=masked
            )
            first, more = nodes[0], nodes[1:]
            login, at, _ = parts.netloc.rpartition("@")
            parts = parts._replace(netloc=login + at + first)
        try:
            port = parts.port or (5671 if tls else 5672)
        except ValueError:
            # Not the parser's text: it quotes the port, which may be part of a password.
            raise InvalidURLError(
                f"{masked!r} has an invalid port (not a number from 0 to 65535); if the "
                "password holds '/', '?', '#' or '@', percent-encode it (%2F %3F %23 %40)"
            ) from None
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        values: dict[str, Any] = {
            "url": url,
            "host": parts.hostname,
            "port": port,
            "more_hosts": more,
            "tls": tls,
            "vhost": unquote(path) or "/",
        }
        if parts.username is not None:
            values["username"] = unquote(parts.username)
            values["password"] = unquote(parts.password or "")
        # A repeated option has always meant its last value here: keep it so.
        values.update(
            parse_options(
                query_pairs(parts.query),
                _OPTIONS,
                name="RabbitMQ",
                shown=masked,
                repeated="last",
                renamed=RENAMED,
            )
        )
        check_tls(values, tls=tls, name="RabbitMQ", shown=masked, use="use amqps://")
        if values.get("auth_mechanism") == "EXTERNAL" and not (tls and values.get("tls_cert")):
            raise InvalidURLError(
                f"auth_mechanism=EXTERNAL in {masked!r} authenticates with the TLS client "
                "certificate: use amqps:// with tls_cert (and tls_key)"
            )
        return cls(**values)


def _check_userinfo(url: str, masked: str) -> None:
    """Refuse a user info that a URL parser would split (``mask_url``'s rule: it runs from
    ``://`` to the last ``@``): an unencoded ``/``, ``?`` or ``#`` in the password ends the
    authority early, and the parser would read a piece of the password as the port, the
    vhost or an option, and quote it in its error."""
    _, sep, rest = url.partition("://")
    userinfo = rest.rpartition("@")[0] if sep else ""
    if any(c in userinfo for c in "/?#"):
        raise InvalidURLError(
            f"the user info of {masked!r} holds an unencoded '/', '?' or '#' (everything "
            "before the last '@' is user:password); percent-encode them in the password "
            "(%2F %3F %23) and an '@' after the host (%40)"
        )


def _tiers_ms(raw: str) -> tuple[float, ...]:
    """The deprecated ``delay_tiers_ms``: milliseconds, sorted as given (as in 0.1), as
    the seconds ``delay_tiers`` takes."""
    try:
        tiers = tuple(sorted({int(part) for part in raw.split(",") if part.strip()}))
    except ValueError:
        tiers = ()
    if not tiers or tiers[0] < 1:
        raise ValueError("must be comma-separated positive milliseconds, e.g. 100,1000,60000")
    return tuple(tier / 1000 for tier in tiers)


_OPTIONS: dict[str, OptionParser] = {
    **shared(
        "start_from", "client_name", "provision", "connect_timeout", "delay_tiers", *TLS_OPTIONS
    ),
    "queue_type": choice("classic", "quorum"),
    "single_active_consumer": strict_flag,
    "mandatory": strict_flag,
    "max_message_bytes": integer(1, BROKER_MAX_MESSAGE_BYTES),
    "heartbeat": integer(0, 3600),
    "publish_timeout": seconds(),
    "reconnect_interval": seconds(),
    "auth_mechanism": choice("PLAIN", "EXTERNAL"),
    "binding": choice(*BINDINGS),
}

# The names of 0.1, still parsed (with a DeprecationWarning) until eventbus 0.2.
RENAMED: dict[str, Renamed] = {
    "delay_tiers_ms": Renamed("delay_tiers", _tiers_ms, "seconds, ascending"),
    "cafile": Renamed("tls_ca"),
    "certfile": Renamed("tls_cert"),
    "keyfile": Renamed("tls_key"),
    "verify": Renamed("tls_verify", strict_flag),
}
