"""``redis[s][+streams]://[user:password@]host[:port][/db][?options]``, parsed and validated.

Every option is validated here, with a one-line error naming the option and
what it accepts; an option this adapter does not know is an error, never ignored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from eventbus.errors import InvalidURLError, mask_url

Mode = Literal["pubsub", "streams"]
T = TypeVar("T")

SCHEMES: dict[str, tuple[Mode, bool]] = {
    "redis": ("pubsub", False),
    "rediss": ("pubsub", True),
    "redis+streams": ("streams", False),
    "rediss+streams": ("streams", True),
}
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024

# Options of both modes, then those only one mode understands.
_COMMON = ("max_message_bytes", "connect_timeout", "socket_timeout", "client_name",
           "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")
_STREAMS = ("maxlen", "block_ms", "claim_idle_ms", "claim_interval_ms", "start_from")
_PUBSUB = ("sharded",)


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """What a Redis URL asks for; see ``docs/adapters/redis.md`` for each option."""

    url: str
    mode: Mode
    tls: bool
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
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

    @property
    def masked_url(self) -> str:
        """The URL with its password hidden, for messages and logs."""
        return mask_url(self.url)

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
        options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        known = _COMMON + (_STREAMS if mode == "streams" else _PUBSUB)
        unknown = sorted(set(options) - set(known))
        if unknown:
            other = "Pub/Sub (redis://)" if mode == "streams" else "Streams (redis+streams://)"
            wrong_mode = [n for n in unknown if n in _STREAMS + _PUBSUB]
            extra = f"; {wrong_mode} only apply to {other}" if wrong_mode else ""
            raise InvalidURLError(
                f"unknown option(s) {unknown} in {masked!r}; this Redis {mode} adapter "
                f"accepts only {', '.join(known)}{extra}"
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
        cert_reqs = options.get("ssl_cert_reqs", "required")
        if cert_reqs not in ("required", "optional", "none"):
            raise InvalidURLError(
                f"ssl_cert_reqs in {masked!r} must be 'required', 'optional' or 'none', "
                f"not {cert_reqs!r}"
            )
        start_from = options.get("start_from")
        if start_from is not None and start_from not in ("earliest", "latest"):
            raise InvalidURLError(
                f"start_from in {masked!r} must be 'earliest' or 'latest', not {start_from!r}"
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
            max_message_bytes=_get(options, "max_message_bytes", masked, int, 1,
                                   DEFAULT_MAX_MESSAGE_BYTES),
            connect_timeout=_get(options, "connect_timeout", masked, float, 0.1, 5.0),
            socket_timeout=_get(options, "socket_timeout", masked, float, 0.1, 10.0),
            client_name=options.get("client_name", "eventbus"),
            ssl_ca_certs=options.get("ssl_ca_certs"),
            ssl_certfile=options.get("ssl_certfile"),
            ssl_keyfile=options.get("ssl_keyfile"),
            ssl_cert_reqs=cert_reqs,
            maxlen=_get(options, "maxlen", masked, int, 0, 1_000_000),
            block_ms=_get(options, "block_ms", masked, int, 10, 1000),
            claim_idle_ms=_get(options, "claim_idle_ms", masked, int, 100, 30_000),
            claim_interval_ms=_get(options, "claim_interval_ms", masked, int, 10, 1000),
            start_from=start_from,  # type: ignore[arg-type]
            sharded=_flag(options, "sharded", masked),
        )


def _get(options: dict[str, str], name: str, masked: str, kind: Callable[[str], T],
         minimum: float, default: T) -> T:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:  # type: ignore[operator]
        what = "an integer" if kind is int else "a number"
        raise InvalidURLError(f"{name} in {masked!r} must be {what} >= {minimum:g}, not {raw!r}")
    return value


def _flag(options: dict[str, str], name: str, masked: str) -> bool:
    value = options.get(name, "false").lower()
    if value not in ("true", "false"):
        raise InvalidURLError(f"{name} in {masked!r} must be 'true' or 'false', not {value!r}")
    return value == "true"
