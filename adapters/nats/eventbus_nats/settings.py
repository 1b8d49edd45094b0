"""``nats://`` / ``nats+core://`` URL -> :class:`NatsSettings`, with one-line errors.

Shape::

    nats://[user:password@ | token@]host:port[,host:port...][?option=value&...]

``nats`` is JetStream, ``nats+core`` core NATS. Credentials come from the URL's
user info (user and password, or a token alone), ``creds`` (a NATS credentials
file) or ``nkey_seed`` (a file holding an NKey seed); every message masks them.

The shared options have their shared names (:data:`eventbus.url_options.VOCABULARY`):
``client_name``, ``provision``, ``tls_ca``/``tls_cert``/``tls_key``/``tls_verify``,
``start_from``, ``connect_timeout``; durations are seconds. The names of 0.1
(``name``, ``create_streams``) still work until eventbus 0.2, with a
``DeprecationWarning`` naming the new one (:data:`RENAMED`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from eventbus.adapter import StartFrom
from eventbus.errors import InvalidURLError, mask_url
from eventbus.url_options import (
    TLS_OPTIONS,
    OptionParser,
    Renamed,
    check_tls,
    choice,
    flag,
    host_ports,
    integer,
    mask_query,
    parse_options,
    pattern,
    query_pairs,
    seconds,
    shared,
    text,
)

DEFAULT_PORT = 4222
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
SCHEMES = ("nats", "nats+core")

Storage = Literal["file", "memory"]


@dataclass(frozen=True, slots=True)
class NatsSettings:
    """Everything the NATS adapters read from their URL.

    Example::

        NatsSettings.from_url("nats://n1:4222,n2:4222?replicas=3&ack_wait=60")
        NatsSettings(servers=("n1:4222",), client_name="billing")  # in code
    """

    servers: tuple[str, ...] = (f"127.0.0.1:{DEFAULT_PORT}",)
    scheme: str = "nats"
    url: str = field(default="", repr=False)
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    creds: str | None = None
    nkey_seed: str | None = None
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_verify: bool = True
    client_name: str = "eventbus"
    connect_timeout: float = 5.0
    request_timeout: float = 10.0
    publish_timeout: float = 10.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # A connection that stopped answering (half-open) is noticed when max_pings_out
    # PINGs in a row went unanswered: within ping_interval * (max_pings_out + 1).
    ping_interval: float = 2.0
    max_pings_out: int = 2
    # Core only: what a subscription buffers for a slow handler before dropping.
    pending_msgs: int = 65_536
    pending_bytes: int = 64 * 1024 * 1024
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
    # Where a new group starts when its subscription does not say (the core applies
    # it: eventbus.adapter.start_from_for).
    start_from: StartFrom | None = None
    # Create missing streams (JetStream); false: a missing one is a ProvisioningError.
    # The adapter's own route stream and the groups' consumers are always created.
    provision: bool = True

    def __post_init__(self) -> None:
        # Settings made in code get the checks a URL gets in from_url (which has
        # already applied them, so a parsed URL never fails here).
        shown = self.masked_url
        if self.scheme not in SCHEMES:
            raise InvalidURLError(
                f"scheme {self.scheme!r} of NatsSettings is neither of "
                f"{SCHEMES}; use 'nats' (JetStream) or 'nats+core'"
            )
        given = {name: True for name in TLS_OPTIONS if getattr(self, name) not in (None, True)}
        check_tls(given, tls=self.tls, name="NATS", shown=shown, use="set tls=True")

    @property
    def jetstream(self) -> bool:
        """``nats://`` (JetStream) rather than ``nats+core://``."""
        return self.scheme == "nats"

    @property
    def half_open_bound(self) -> float:
        """Seconds within which a connection that went silent is noticed (and replaced)."""
        return self.ping_interval * (self.max_pings_out + 1)

    @property
    def masked_url(self) -> str:
        """The URL with its password or token replaced by ``***`` (for settings made in
        code, the scheme and the servers)."""
        return masked(self.url) if self.url else f"{self.scheme}://{','.join(self.servers)}"

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
        query = query_pairs(parts.query)
        options = parse_options(query, _OPTIONS, name="NATS", shown=shown, renamed=RENAMED)
        values.update(options)
        _check(values, set(options), shown)
        return cls(**values)


def _check(values: dict[str, Any], seen: set[str], shown: str) -> None:
    jetstream_only = seen & _JETSTREAM_ONLY
    if values["scheme"] == "nats+core" and jetstream_only:
        raise InvalidURLError(
            f"option(s) {sorted(jetstream_only)} in {shown!r} apply to JetStream only; "
            "core NATS (nats+core://) stores nothing: use nats:// or drop them"
        )
    core_only = seen & _CORE_ONLY
    if values["scheme"] == "nats" and core_only:
        raise InvalidURLError(
            f"option(s) {sorted(core_only)} in {shown!r} apply to core NATS only; a "
            "JetStream subscription holds at most its prefetch: use nats+core:// or drop them"
        )
    # 0.1 selected TLS by a CA or a client certificate alone; the shared rule (one for
    # every adapter) refuses TLS options without TLS selected, naming tls=true.
    check_tls(
        values,
        tls=bool(values.get("tls")),
        name="NATS",
        shown=shown,
        use="add tls=true (the servers are then reached over TLS)",
    )
    if values.get("token") and values.get("user"):
        raise InvalidURLError(f"give either user:password or a token in {shown!r}, not both")
    if values.get("ack_wait", 30.0) < 1.0:
        raise InvalidURLError(
            f"ack_wait must be at least 1 second in {shown!r}: in_progress is sent every "
            "ack_wait/3 while a handler runs"
        )
    max_deliver = values.get("max_deliver", -1)
    if max_deliver in (0, 1) or max_deliver < -1:
        raise InvalidURLError(
            f"max_deliver must be -1 (unlimited, the default) or at least 2 in {shown!r}: "
            "a message reaching its last delivery is carried over to a fresh copy first"
        )


def masked(url: str) -> str:
    """``url`` safe to show: :func:`eventbus.errors.mask_url` plus a lone token."""
    shown = mask_query(mask_url(url), "password", "token")
    match = re.match(r"^([a-z+]+://)([^@/:]+)@", shown)
    if match and match.group(2) != "***":
        shown = f"{match.group(1)}***@{shown[match.end() :]}"
    return shown


def _servers(netloc: str, shown: str) -> tuple[str, ...]:
    servers = host_ports(netloc, default_port=DEFAULT_PORT, name="NATS", shown=shown)
    return servers or (f"127.0.0.1:{DEFAULT_PORT}",)


_LIMIT = "must be -1 (no limit) or a positive integer"


def _limit(raw: str) -> int:
    value = integer(-1, allowed=_LIMIT)(raw)
    if value == 0:
        raise ValueError(_LIMIT)
    return value


_OPTIONS: dict[str, OptionParser] = {
    **shared("client_name", "provision", "start_from", "connect_timeout", *TLS_OPTIONS),
    "creds": text,
    "nkey_seed": text,
    "tls": flag,
    "request_timeout": seconds(),
    "publish_timeout": seconds(),
    "max_message_bytes": integer(1),
    "ping_interval": seconds(),
    "max_pings_out": integer(1),
    "pending_msgs": integer(1),
    "pending_bytes": integer(1),
    "stream_prefix": pattern(r"[A-Za-z0-9_-]{1,32}", "use 1-32 letters, digits, '_' or '-'"),
    "storage": choice("file", "memory"),
    "replicas": integer(1),
    "max_age": seconds(
        inclusive=True, allowed="must be zero (no limit) or a positive number of seconds"
    ),
    "max_bytes": _limit,
    "max_msgs": _limit,
    "dedupe_window": seconds(),
    "ack_wait": seconds(),
    # Range-checked in _check, which explains what -1 and 0 mean.
    "max_deliver": integer(),
    "fetch_timeout": seconds(),
}
# The names of 0.1, still parsed (with a DeprecationWarning) until eventbus 0.2.
RENAMED: dict[str, Renamed] = {
    "name": Renamed("client_name"),
    "create_streams": Renamed("provision"),
}
_CORE_ONLY = {"pending_msgs", "pending_bytes"}
# start_from and provision are accepted by core NATS too (the shared vocabulary): it
# stores nothing, so a group gets what is published once it subscribed, and there is
# nothing to create.
_JETSTREAM_ONLY = {
    "stream_prefix",
    "storage",
    "replicas",
    "max_age",
    "max_bytes",
    "max_msgs",
    "dedupe_window",
    "ack_wait",
    "max_deliver",
    "fetch_timeout",
}
