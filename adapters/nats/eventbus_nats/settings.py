"""``nats://`` / ``nats+core://`` URL -> :class:`NatsSettings`, with one-line errors.

Shape::

    nats://[user:password@ | token@]host:port[,host:port...][?option=value&...]

``nats`` is JetStream, ``nats+core`` core NATS. Credentials come from the URL's
user info (user and password, or a token alone), ``creds`` (a NATS credentials
file) or ``nkey_seed`` (a file holding an NKey seed); every message masks them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from eventbus.errors import InvalidURLError, mask_url

DEFAULT_PORT = 4222
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
SCHEMES = ("nats", "nats+core")

StartFrom = Literal["earliest", "latest"]
Storage = Literal["file", "memory"]

_QUERY_SECRET = re.compile(r"((?:^|[?&])(?:password|token)=)[^&#]*")


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """Everything the NATS adapters read from their URL.

    Example::

        NatsSettings.from_url("nats://n1:4222,n2:4222?replicas=3&ack_wait=60")
    """

    url: str = field(repr=False)
    scheme: str
    servers: tuple[str, ...]
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    creds: str | None = None
    nkey_seed: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    name: str = "eventbus"
    connect_timeout: float = 5.0
    request_timeout: float = 10.0
    publish_timeout: float = 10.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # JetStream only.
    stream_prefix: str = "EB"
    storage: Storage = "file"
    replicas: int = 1
    max_age: float = 0.0
    max_bytes: int = -1
    max_msgs: int = -1
    dedupe_window: float = 120.0
    ack_wait: float = 30.0
    max_deliver: int = -1
    fetch_timeout: float = 0.5
    start_from: StartFrom | None = None
    create_streams: bool = True

    @property
    def jetstream(self) -> bool:
        """``nats://`` (JetStream) rather than ``nats+core://``."""
        return self.scheme == "nats"

    @property
    def masked_url(self) -> str:
        """The URL with its password or token replaced by ``***``."""
        return masked(self.url)

    def server_urls(self) -> list[str]:
        """``nats://host:port`` (or ``tls://``) per server, without credentials."""
        scheme = "tls" if self.tls else "nats"
        return [f"{scheme}://{server}" for server in self.servers]

    @classmethod
    def from_url(cls, url: str) -> NatsSettings:
        """Parse ``url``; raise :class:`InvalidURLError` naming what is wrong."""
        shown = masked(url)
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise InvalidURLError(f"cannot parse NATS URL {shown!r}: {exc}") from exc
        if parts.scheme not in SCHEMES:
            raise InvalidURLError(
                f"the NATS adapter got {shown!r}; use nats://host:4222 (JetStream) or "
                "nats+core://host:4222 (core NATS)"
            )
        netloc = parts.netloc
        values: dict[str, Any] = {"url": url, "scheme": parts.scheme}
        if "@" in netloc:
            userinfo, netloc = netloc.rsplit("@", 1)
            name, colon, secret = userinfo.partition(":")
            if colon:
                values["user"] = unquote(name) or None
                values["password"] = unquote(secret) or None
            elif name:
                values["token"] = unquote(name)  # nats://TOKEN@host, as nats-py reads it
        values["servers"] = _servers(netloc, shown)
        seen: set[str] = set()
        for option, raw in parse_qsl(parts.query, keep_blank_values=True):
            parser = _OPTIONS.get(option)
            if parser is None:
                raise InvalidURLError(
                    f"unknown option {option!r} in NATS URL {shown!r}; the NATS adapter "
                    f"accepts: {', '.join(sorted(_OPTIONS))}"
                )
            if option in seen:
                raise InvalidURLError(f"option {option!r} is given twice in {shown!r}")
            seen.add(option)
            try:
                values[option] = parser(raw)
            except ValueError as exc:
                value = "***" if option in ("password", "token") else repr(raw)
                raise InvalidURLError(
                    f"option {option}={value} in NATS URL {shown!r} is invalid: {exc}"
                ) from exc
        _check(values, seen, shown)
        return cls(**values)


def _check(values: dict[str, Any], seen: set[str], shown: str) -> None:
    jetstream_only = seen & _JETSTREAM_ONLY
    if values["scheme"] == "nats+core" and jetstream_only:
        raise InvalidURLError(
            f"option(s) {sorted(jetstream_only)} in {shown!r} apply to JetStream only; "
            "core NATS (nats+core://) stores nothing: use nats:// or drop them"
        )
    if (values.get("tls_cert") is None) != (values.get("tls_key") is None):
        raise InvalidURLError(f"tls_cert and tls_key must be given together in {shown!r}")
    if any(values.get(k) for k in ("tls_ca", "tls_cert")):
        values["tls"] = True
    if values.get("token") and values.get("user"):
        raise InvalidURLError(f"give either user:password or a token in {shown!r}, not both")
    if values.get("ack_wait", 30.0) < 1.0:
        raise InvalidURLError(
            f"ack_wait must be at least 1 second in {shown!r}: in_progress is sent every "
            "ack_wait/3 while a handler runs"
        )
    max_deliver = values.get("max_deliver", -1)
    if max_deliver == 0 or max_deliver < -1:
        raise InvalidURLError(
            f"max_deliver must be -1 (unlimited, the default) or at least 1 in {shown!r}"
        )


def masked(url: str) -> str:
    """``url`` safe to show: :func:`eventbus.errors.mask_url` plus a lone token."""
    text = _QUERY_SECRET.sub(r"\1***", mask_url(url))
    match = re.match(r"^([a-z+]+://)([^@/:]+)@", text)
    if match and match.group(2) != "***":
        text = f"{match.group(1)}***@{text[match.end():]}"
    return text


def _servers(netloc: str, shown: str) -> tuple[str, ...]:
    servers: list[str] = []
    for item in netloc.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
        if not host:
            raise InvalidURLError(f"NATS URL {shown!r} has an empty host in {item!r}")
        port = DEFAULT_PORT
        if port_text:
            if not port_text.isdigit() or not 0 < int(port_text) < 65536:
                raise InvalidURLError(f"NATS URL {shown!r} has an invalid port in {item!r}")
            port = int(port_text)
        servers.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if not servers:
        servers.append(f"127.0.0.1:{DEFAULT_PORT}")
    return tuple(servers)


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be a positive integer")
    return value


def _limit(raw: str) -> int:
    value = int(raw)
    if value < -1 or value == 0:
        raise ValueError("must be -1 (no limit) or a positive integer")
    return value


def _seconds(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _non_negative_seconds(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise ValueError("must be zero (no limit) or a positive number of seconds")
    return value


def _text(raw: str) -> str:
    if not raw:
        raise ValueError("must not be empty")
    return raw


def _stream_prefix(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", raw):
        raise ValueError("use 1-32 letters, digits, '_' or '-'")
    return raw


def _storage(raw: str) -> Storage:
    if raw == "file":
        return "file"
    if raw == "memory":
        return "memory"
    raise ValueError("use file or memory")


def _start_from(raw: str) -> StartFrom:
    if raw == "earliest":
        return "earliest"
    if raw == "latest":
        return "latest"
    raise ValueError("use earliest or latest")


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("use true or false")


_OPTIONS: dict[str, Callable[[str], Any]] = {
    "creds": _text,
    "nkey_seed": _text,
    "tls": _bool,
    "tls_ca": _text,
    "tls_cert": _text,
    "tls_key": _text,
    "name": _text,
    "connect_timeout": _seconds,
    "request_timeout": _seconds,
    "publish_timeout": _seconds,
    "max_message_bytes": _positive_int,
    "stream_prefix": _stream_prefix,
    "storage": _storage,
    "replicas": _positive_int,
    "max_age": _non_negative_seconds,
    "max_bytes": _limit,
    "max_msgs": _limit,
    "dedupe_window": _seconds,
    "ack_wait": _seconds,
    "max_deliver": int,
    "fetch_timeout": _seconds,
    "start_from": _start_from,
    "create_streams": _bool,
}
_JETSTREAM_ONLY = {"stream_prefix", "storage", "replicas", "max_age", "max_bytes", "max_msgs",
                   "dedupe_window", "ack_wait", "max_deliver", "fetch_timeout", "start_from",
                   "create_streams"}
