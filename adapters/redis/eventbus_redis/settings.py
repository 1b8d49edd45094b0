"""``redis[s][+streams]://[user:password@]host[:port][/db][?options]``, parsed and validated.

With ``sentinel=<master name>`` the hosts are Redis Sentinels, several allowed
(``redis+streams://s1:26379,s2:26379/0?sentinel=mymaster``): the client asks them
for the primary of that name and asks again after a failover.

Every option is validated here, with a one-line error naming the option and
what it accepts; an option this adapter does not know is an error, never ignored.

The shared options have their shared names (:data:`eventbus.url_options.VOCABULARY`):
``client_name``, ``provision``, ``tls_ca``/``tls_cert``/``tls_key``/``tls_verify``,
``start_from``, ``connect_timeout``; durations are seconds. The names of 0.1
(``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``,
``block_ms``, ``claim_idle_ms``, ``claim_interval_ms``) still work until eventbus
0.2, with a ``DeprecationWarning`` naming the new one (:data:`RENAMED`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

from eventbus.adapter import StartFrom
from eventbus.errors import InvalidURLError, mask_url
from eventbus.url_options import (
    TLS_OPTIONS,
    OptionParser,
    Renamed,
    check_tls,
    choice,
    from_milliseconds,
    host_ports,
    integer,
    parse_options,
    pattern,
    query_pairs,
    seconds,
    shared,
    strict_flag,
)

Mode = Literal["pubsub", "streams"]

SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis": ("pubsub", False),
    "rediss": ("pubsub", True),
    "redis+streams": ("streams", False),
    "rediss+streams": ("streams", True),
}
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """What a Redis URL asks for; see ``docs/adapters/redis.md`` for each option.

    Its repr never shows the password (nor the URL, which may carry it): error
    reporters that capture frame locals print it. Durations are seconds.

    Example::

        RedisSettings.from_url("redis+streams://localhost:6379/0?maxlen=100000")
        RedisSettings(mode="streams", host="redis.internal", client_name="billing")  # in code
    """

    mode: Mode = "streams"
    tls: bool = False
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    url: str = field(default="", repr=False)
    # Sentinel: the primary's name, and the Sentinels (host:port) that know it; the
    # host and port above are then unused.
    sentinel: str | None = None
    sentinels: tuple[str, ...] = ()
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    connect_timeout: float = 5.0
    socket_timeout: float = 10.0
    client_name: str = "eventbus"
    # rediss:// only: the CA file, the client certificate and its key, and whether the
    # server's certificate is verified.
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_verify: bool = True
    # Where a new group starts when its subscription does not say (the core applies it:
    # eventbus.adapter.start_from_for). Pub/Sub keeps nothing, so there it changes nothing.
    start_from: StartFrom | None = None
    # Create missing streams (Streams; a publish too); false: a missing one is a
    # ProvisioningError. The groups, a group's route stream and the delay sets are
    # always created. Pub/Sub has nothing to create.
    provision: bool = True
    # Streams only.
    maxlen: int = 1_000_000
    # WAIT for this many replicas after each round trip (0: no WAIT), at most wait_timeout.
    wait_replicas: int = 0
    wait_timeout: float = 1.0
    block: float = 1.0
    claim_idle: float = 30.0
    claim_interval: float = 1.0
    # Pub/Sub only.
    sharded: bool = False
    ping_interval: float = 5.0
    ping_timeout: float = 5.0

    def __post_init__(self) -> None:
        # Settings made in code get the checks a URL gets in from_url (which has
        # already applied them, so a parsed URL never fails here).
        if self.mode not in ("pubsub", "streams"):
            raise InvalidURLError(
                f"mode {self.mode!r} of RedisSettings is neither 'pubsub' nor 'streams'"
            )
        given = {name: True for name in TLS_OPTIONS if getattr(self, name) not in (None, True)}
        check_tls(given, tls=self.tls, name="Redis", shown=self.masked_url, use="set tls=True")
        if self.sentinel is not None and not self.sentinels:
            raise InvalidURLError(
                f"RedisSettings(sentinel={self.sentinel!r}) names no Sentinel; give "
                "sentinels=('host:26379', ...)"
            )

    @property
    def masked_url(self) -> str:
        """The URL with its password hidden, for messages and logs (for settings made in
        code, the scheme, host, port and database)."""
        if self.url:
            return mask_url(self.url)
        scheme = ("rediss" if self.tls else "redis") + (
            "+streams" if self.mode == "streams" else ""
        )
        return f"{scheme}://{self.host}:{self.port}/{self.db}"

    @property
    def server(self) -> str:
        """Where the data is, for health reports: ``host:port/db``, or the primary's
        name and its Sentinels."""
        if self.sentinel is not None:
            return f"{self.sentinel} via Sentinel {','.join(self.sentinels)}/{self.db}"
        return f"{self.host}:{self.port}/{self.db}"

    @property
    def read_timeout(self) -> float:
        """Seconds a reply may take before redis-py drops the connection and tries a new
        one (``socket_timeout``, kept above a Streams read's ``block``)."""
        if self.mode == "streams":
            return max(self.socket_timeout, self.block + 5.0)
        return self.socket_timeout

    @property
    def half_open_bound(self) -> float | None:
        """Seconds within which a connection that stopped answering without closing is
        noticed (reported by ``health()``, then replaced); ``None`` if never.

        Pub/Sub: a subscribe connection that heard nothing for ``ping_interval`` is
        sent a PING, and one that then hears nothing for ``ping_timeout`` is given
        up (``inf`` switches the ping off). Streams: a consumer's blocking read
        (``XREADGROUP ... BLOCK block``, issued again as soon as one returns) is
        its ping; a read unanswered after :attr:`read_timeout` is overdue.
        """
        if self.mode == "streams":
            return max(self.read_timeout, self.connect_timeout)
        bound = self.ping_interval + self.ping_timeout
        return None if bound == float("inf") else max(bound, self.connect_timeout)

    @classmethod
    def from_url(cls, url: str) -> RedisSettings:
        """Parse and validate ``url``; raise InvalidURLError naming the bad part."""
        parts = urlsplit(url)
        masked = mask_url(url)
        if parts.scheme not in SCHEMES:
            raise InvalidURLError(
                f"Redis adapter got {masked!r}; use redis:// or rediss:// (Pub/Sub) or "
                "redis+streams:// or rediss+streams:// (Streams)"
            )
        mode, tls = SCHEMES[parts.scheme]
        streams = mode == "streams"
        parsers = _COMMON | (_STREAMS if streams else _PUBSUB)

        def wrong_mode(unknown: list[str]) -> str:
            other = "Pub/Sub (redis://)" if streams else "Streams (redis+streams://)"
            names = [n for n in unknown if n in _STREAMS or n in _PUBSUB or n in RENAMED]
            return f"; {names} only apply to {other}" if names else ""

        # parse_qs semantics, as always here: a blank value is no value, the last one counts.
        options = parse_options(
            query_pairs(parts.query, keep_blank=False),
            parsers,
            name=f"Redis {'Streams' if streams else 'Pub/Sub'}",
            shown=masked,
            repeated="last",
            unknown_hint=wrong_mode,
            renamed=RENAMED if streams else _COMMON_RENAMED,
        )
        # Neither error quotes what the parser read: when a password holds "/", "?" or
        # "#", the "port" and the "database" are pieces of it.
        sentinels: tuple[str, ...] = ()
        if "sentinel" in options:
            netloc = parts.netloc.rpartition("@")[2]
            sentinels = host_ports(
                netloc, default_port=SENTINEL_PORT, name="Redis Sentinel", shown=masked
            )
            if not sentinels:
                raise InvalidURLError(
                    f"Redis URL {masked!r} names no Sentinel; use "
                    "redis+streams://s1:26379,s2:26379/0?sentinel=<primary name>"
                )
        elif "," in parts.netloc.rpartition("@")[2]:
            raise InvalidURLError(
                f"Redis URL {masked!r} names several hosts without sentinel=<primary name>: "
                "several hosts are the Sentinels of one primary (Redis Cluster is not "
                "supported)"
            )
        try:
            port = 6379 if sentinels else parts.port or 6379
        except ValueError:
            raise InvalidURLError(
                f"port in {masked!r} is not a number; if the password holds '/', '?' or "
                "'#', percent-encode them (%2F, %3F, %23)"
            ) from None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise InvalidURLError(
                f"database in {masked!r} must be a number (/0); if the password holds '/', "
                "'?' or '#', percent-encode them (%2F, %3F, %23)"
            )
        check_tls(
            options,
            tls=tls,
            name="Redis",
            shown=masked,
            use="use rediss:// (Pub/Sub) or rediss+streams:// (Streams)",
        )
        return cls(
            url=url,
            mode=mode,
            tls=tls,
            host=(parts.hostname or "127.0.0.1") if not sentinels else "127.0.0.1",
            sentinels=sentinels,
            port=port,
            db=int(path or 0),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            **options,
        )


def _finite(parse: Callable[[str], float]) -> Callable[[str], float]:
    """``parse``, refusing infinity (a blocking read or a claim needs a real duration)."""

    def finite(raw: str) -> float:
        value = parse(raw)
        if math.isinf(value):
            raise ValueError("must be a finite number of seconds")
        return value

    return finite


def _verify(raw: str) -> bool:
    """0.1's ``ssl_cert_reqs`` as ``tls_verify``: ``required`` and ``optional`` (which a
    client treats as required) verify the server, ``none`` does not."""
    return choice("required", "optional", "none")(raw) != "none"


_COMMON: dict[str, OptionParser] = {
    **shared(
        "client_name",
        "provision",
        "start_from",
        *TLS_OPTIONS,
        connect_timeout=seconds(0.1, inclusive=True),
    ),
    "max_message_bytes": integer(1),
    "socket_timeout": seconds(0.1, inclusive=True),
    "sentinel": pattern(r"[^\s,]{1,200}", "use the primary's name the Sentinels know"),
}
_STREAMS: dict[str, OptionParser] = {
    "maxlen": integer(0),
    "wait_replicas": integer(0),
    "wait_timeout": _finite(seconds(0.001, inclusive=True)),
    "block": _finite(seconds(0.01, inclusive=True)),
    "claim_idle": _finite(seconds(0.1, inclusive=True)),
    "claim_interval": _finite(seconds(0.01, inclusive=True)),
}
_PUBSUB: dict[str, OptionParser] = {
    "sharded": strict_flag,
    "ping_interval": seconds(0.1, inclusive=True),
    "ping_timeout": seconds(0.1, inclusive=True),
}
# The names of 0.1, still parsed (with a DeprecationWarning) until eventbus 0.2.
_COMMON_RENAMED: dict[str, Renamed] = {
    "ssl_ca_certs": Renamed("tls_ca"),
    "ssl_certfile": Renamed("tls_cert"),
    "ssl_keyfile": Renamed("tls_key"),
    "ssl_cert_reqs": Renamed(
        "tls_verify", _verify, "true for required or optional, false for none"
    ),
}
RENAMED: dict[str, Renamed] = {
    **_COMMON_RENAMED,
    **{
        f"{name}_ms": Renamed(name, from_milliseconds(integer(low)), "seconds")
        for name, low in (("block", 10), ("claim_idle", 100), ("claim_interval", 10))
    },
}
