"""``redis[s][+streams]://[user:password@]host[:port][/db][?options]``, parsed and validated.

Every option is validated here, with a one-line error naming the option and
what it accepts; an option this adapter does not know is an error, never ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

from eventbus.errors import InvalidURLError, mask_url
from eventbus.url_options import (
    OptionParser,
    choice,
    integer,
    parse_options,
    query_pairs,
    seconds,
    strict_flag,
    text,
)

Mode = Literal["pubsub", "streams"]

SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis": ("pubsub", False),
    "rediss": ("pubsub", True),
    "redis+streams": ("streams", False),
    "rediss+streams": ("streams", True),
}
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024

@dataclass(frozen=True, slots=True)
class RedisSettings:
    """What a Redis URL asks for; see ``docs/adapters/redis.md`` for each option.

    Its repr never shows the password (nor the URL, which may carry it): error
    reporters that capture frame locals print it.
    """

    url: str = field(repr=False)
    mode: Mode
    tls: bool
    host: str
    port: int
    db: int
    username: str | None
    password: str | None = field(repr=False)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    connect_timeout: float = 5.0
    socket_timeout: float = 10.0
    client_name: str = "eventbus"
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: str = "required"
    # Streams only.
    maxlen: int = 1_000_000
    block_ms: int = 1000
    claim_idle_ms: int = 30_000
    claim_interval_ms: int = 1000
    start_from: Literal["earliest", "latest"] | None = None
    # Pub/Sub only.
    sharded: bool = False
    ping_interval: float = 5.0
    ping_timeout: float = 5.0

    @property
    def masked_url(self) -> str:
        """The URL with its password hidden, for messages and logs."""
        return mask_url(self.url)

    @property
    def read_timeout(self) -> float:
        """Seconds a reply may take before redis-py drops the connection and tries a new
        one (``socket_timeout``, kept above a Streams read's ``block_ms``)."""
        if self.mode == "streams":
            return max(self.socket_timeout, self.block_ms / 1000 + 5.0)
        return self.socket_timeout

    @property
    def half_open_bound(self) -> float | None:
        """Seconds within which a connection that stopped answering without closing is
        noticed (reported by ``health()``, then replaced); ``None`` if never.

        Pub/Sub: a subscribe connection that heard nothing for ``ping_interval`` is
        sent a PING, and one that then hears nothing for ``ping_timeout`` is given
        up (``inf`` switches the ping off). Streams: a consumer's blocking read
        (``XREADGROUP ... BLOCK block_ms``, issued again as soon as one returns) is
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
            names = [n for n in unknown if n in _STREAMS or n in _PUBSUB]
            return f"; {names} only apply to {other}" if names else ""

        # parse_qs semantics, as always here: a blank value is no value, the last one counts.
        options = parse_options(
            query_pairs(parts.query, keep_blank=False), parsers,
            name=f"Redis {'Streams' if streams else 'Pub/Sub'}", shown=masked,
            repeated="last", unknown_hint=wrong_mode,
        )
        try:
            port = parts.port or 6379
        except ValueError as exc:
            raise InvalidURLError(f"port in {masked!r} is not a number") from exc
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise InvalidURLError(f"database in {masked!r} must be a number (/0), not {path!r}")
        tls_options = [n for n in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile",
                                   "ssl_cert_reqs") if n in options]
        if tls_options and not tls:
            raise InvalidURLError(
                f"{tls_options} in {masked!r} need TLS; use rediss:// or rediss+streams://"
            )
        return cls(
            url=url,
            mode=mode,
            tls=tls,
            host=parts.hostname or "127.0.0.1",
            port=port,
            db=int(path or 0),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            **options,
        )


_COMMON: dict[str, OptionParser] = {
    "max_message_bytes": integer(1),
    "connect_timeout": seconds(0.1, inclusive=True),
    "socket_timeout": seconds(0.1, inclusive=True),
    "client_name": text,
    "ssl_ca_certs": text,
    "ssl_certfile": text,
    "ssl_keyfile": text,
    "ssl_cert_reqs": choice("required", "optional", "none"),
}
_STREAMS: dict[str, OptionParser] = {
    "maxlen": integer(0),
    "block_ms": integer(10),
    "claim_idle_ms": integer(100),
    "claim_interval_ms": integer(10),
    "start_from": choice("earliest", "latest"),
}
_PUBSUB: dict[str, OptionParser] = {
    "sharded": strict_flag,
    "ping_interval": seconds(0.1, inclusive=True),
    "ping_timeout": seconds(0.1, inclusive=True),
}
