"""One nats-py connection per adapter: options, fail-fast connect, safe close, and
what a client's errors mean.

nats-py reconnects by itself after a dropped connection (forever, every
``reconnect_time_wait``) and re-creates its subscriptions, so neither adapter
has to; the initial connect, in contrast, fails fast with the masked URL. A
client the user configured (``NatsAdapter(settings=..., client=...)``) is used as
it is: its own options and callbacks, never closed by the adapter.

:data:`CONNECTION_ERRORS` and :func:`jetstream_errors` say, for
:func:`eventbus.adapters_util.map_exceptions`, which client errors are the server
out of reach (retried) and which a refusal that retrying will not change.
:class:`NatsAdapterBase` is what the JetStream and the core adapter share: the
settings, the one connection and the server's limits learnt on connect.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, ClassVar

from nats import errors as nats_errors
from nats.aio.client import Client
from nats.js.errors import APIError, BadRequestError

from eventbus.adapter import Capabilities
from eventbus.adapters_util import ConfiguredAdapter, Mapped, open_once, tls_context, translate
from eventbus.errors import BrokerConnectionError, ProvisioningError

from .settings import NatsSettings
from .wire import FastClient

log = logging.getLogger("eventbus.nats")

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    nats_errors.ConnectionClosedError,
    nats_errors.TimeoutError,
    nats_errors.NoRespondersError,
    nats_errors.OutboundBufferLimitError,
    TimeoutError,
    OSError,
)
"""The server out of reach: no answer, a closed connection, a full reconnect buffer."""

CLIENT_ERRORS: dict[type[BaseException] | tuple[type[BaseException], ...], Mapped] = {
    (nats_errors.Error, *CONNECTION_ERRORS): BrokerConnectionError
}
"""Anything nats-py raises, as the connection failing (what core NATS sends and
subscribes with: it has no refusal of its own)."""


def jetstream_errors(exc: Exception) -> Mapped | None:
    """What a failed JetStream API call (creating or looking up a stream or consumer)
    means: a refusal (``400``: subjects taken by another stream, a limit reached) does
    not change by retrying, so :class:`ProvisioningError`; anything else (no answer,
    ``503`` while the server elects a leader, a closed connection) is the server out
    of reach, retried as a :class:`BrokerConnectionError`."""
    if isinstance(exc, BadRequestError):
        return (
            ProvisioningError,
            "change what the server refused (the stream or consumer "
            "an operator set up, or the account's limits) or the topic",
        )
    if isinstance(exc, APIError | nats_errors.Error | CONNECTION_ERRORS):
        return BrokerConnectionError
    return None


def _why(exc: BaseException, settings: NatsSettings) -> Mapped:
    """The error of a failed first connect, with a phrase saying why."""
    if isinstance(exc, ConnectionRefusedError):
        return (BrokerConnectionError, "the connection was refused: is nats-server running there?")
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return (
            BrokerConnectionError,
            f"the server did not answer within connect_timeout={settings.connect_timeout:g}s "
            "(it accepts TCP but does not speak NATS, or the path drops packets)",
        )
    if isinstance(exc, nats_errors.AuthorizationError) or "authorization" in str(exc).lower():
        return (
            BrokerConnectionError,
            "the server refused the credentials (authorization violation)",
        )
    return BrokerConnectionError


async def open_connection(settings: NatsSettings, what: str) -> FastClient:
    """Connect (fail fast: once every server failed an attempt), then let nats-py
    reconnect forever after drops, replacing a connection that stopped answering
    PINGs within ``settings.half_open_bound``."""
    client = FastClient()
    # nats-py retries the servers of a failing first connect for as long as we let
    # it; errors seen before the connect succeeded are counted here so it ends as
    # soon as each server has failed once, saying why.
    first_errors: list[BaseException] = []
    all_failed = asyncio.Event()
    slow_reported = [0.0]

    async def on_error(exc: Exception) -> None:
        if not client.is_connected and not client.closing and not connected:
            first_errors.append(exc)
            if len(first_errors) >= len(settings.servers):
                all_failed.set()
            return
        if isinstance(exc, nats_errors.SlowConsumerError):
            # nats-py's own queue in front of a subscription overflowed (the event loop
            # did not run its callback for long): it dropped a message.
            now = time.monotonic()
            if now - slow_reported[0] > 10.0:
                slow_reported[0] = now
                log.warning(
                    "NATS %s at %s: nats-py dropped a message for a slow subscription "
                    "on %r (its pending limits were reached)",
                    what,
                    settings.masked_url,
                    exc.subject,
                )
            return
        log.debug("NATS %s at %s: %s: %s", what, settings.masked_url, type(exc).__name__, exc)

    async def on_disconnected() -> None:
        if client.closing:
            log.debug("NATS %s closed its connection to %s", what, settings.masked_url)
        elif client.is_closed:
            log.warning(
                "NATS %s: the connection to %s was closed and will not be re-established (%s)",
                what,
                settings.masked_url,
                client.last_error,
            )
        else:
            log.info("NATS %s lost its connection to %s; reconnecting", what, settings.masked_url)

    async def on_reconnected() -> None:
        log.info("NATS %s reconnected to %s", what, settings.masked_url)

    options: dict[str, Any] = {
        "servers": settings.server_urls(),
        "name": settings.client_name,
        "connect_timeout": settings.connect_timeout,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "ping_interval": settings.ping_interval,
        "max_outstanding_pings": settings.max_pings_out,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
        # Messages published while reconnecting wait here (bounded), not lost.
        "pending_size": 8 * 1024 * 1024,
    }
    if settings.user is not None:
        options["user"] = settings.user
        options["password"] = settings.password
    if settings.token is not None:
        options["token"] = settings.token
    if settings.creds is not None:
        options["user_credentials"] = settings.creds
    if settings.nkey_seed is not None:
        options["nkeys_seed"] = settings.nkey_seed
    if settings.tls:
        options["tls"] = tls_context(
            settings.tls_ca, settings.tls_cert, settings.tls_key, settings.tls_verify
        )
    connected = False
    connecting = asyncio.ensure_future(client.connect(**options))
    failed = asyncio.ensure_future(all_failed.wait())
    try:
        # A safety net above connect_timeout per server, for what the error count misses.
        done, _ = await asyncio.wait(
            {connecting, failed},
            timeout=settings.connect_timeout * len(settings.servers) + 0.5,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        failed.cancel()
    if connecting in done and connecting.exception() is None:
        connected = True
        return client
    connecting.cancel()
    with contextlib.suppress(BaseException):
        await connecting
    exc: BaseException | None = None
    if connecting.done() and not connecting.cancelled():
        exc = connecting.exception()
    exc = first_errors[0] if first_errors else exc
    await close_quietly(client)
    if not isinstance(exc, Exception):  # no error at all: the safety net's timeout
        exc = TimeoutError()
    servers = "" if len(settings.servers) == 1 else f" (all {len(settings.servers)} servers failed)"
    raise translate(
        exc,
        lambda e: _why(e, settings),
        what=f"connecting to NATS at {settings.masked_url}{servers}",
    ) from exc


def message_limit(settings: NatsSettings, client: Client, what: str) -> int:
    """The largest message to send: ``max_message_bytes``, lowered to the server's
    ``max_payload`` (from its INFO at connect), which the server enforces by
    closing the connection of a client that sends more."""
    limit = settings.max_message_bytes
    server = client.max_payload
    if server and server < limit:
        log.info(
            "NATS %s: the server at %s takes messages of at most %d bytes (max_payload); "
            "max_message_bytes=%d lowered to that",
            what,
            settings.masked_url,
            server,
            limit,
        )
        limit = server
    return limit


async def close_quietly(client: Client, timeout: float = 5.0) -> None:
    """Flush and close ``client``; never hangs, never raises (even CancelledError
    raised by the client's own tasks while the server is unreachable)."""
    if isinstance(client, FastClient):
        client.closing = True
    if client.is_closed:
        return
    task = asyncio.current_task()
    try:
        await asyncio.wait_for(client.close(), timeout)
    except asyncio.CancelledError:
        if task is not None and task.cancelling():
            raise  # our caller is being cancelled: let it
        log.debug("closing the NATS connection was cancelled from inside the client")
    except Exception as exc:
        log.debug("closing the NATS connection failed: %s: %s", type(exc).__name__, exc)


class Connection:
    """An adapter's one nats-py connection: opened from the settings on first use (and
    closed by :meth:`close`), or the client the user configured, used as it is once it
    is connected and never closed here."""

    def __init__(self, settings: NatsSettings, client: Client | None, what: str) -> None:
        self.settings = settings
        self.what = what
        self._given = client
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    @property
    def client(self) -> Client:
        """The open connection; :class:`BrokerConnectionError` before :meth:`open`."""
        if self._client is None:
            raise BrokerConnectionError(
                f"the NATS {self.what} for {self.settings.masked_url} is not connected; call "
                "connect() (or start the bus) first"
            )
        return self._client

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` has succeeded (and :meth:`close` not been called since)."""
        return self._client is not None

    async def open(self, prepare: Callable[[Client], Awaitable[None]]) -> Client:
        """The connection, opened once (concurrent callers wait for the first); then
        ``prepare(client)`` (check JetStream, learn the server's limits). When opening or
        preparing fails, a connection of ours is closed again and nothing is kept."""
        return await open_once(self._lock, lambda: self._client, lambda: self._open(prepare))

    async def _open(self, prepare: Callable[[Client], Awaitable[None]]) -> Client:
        given = self._given
        if given is not None and not given.is_connected:
            raise BrokerConnectionError(
                f"the nats-py client given to the NATS {self.what} for "
                f"{self.settings.masked_url} is not connected; connect it first (the "
                "adapter uses it as it is)"
            )
        client = given if given is not None else await open_connection(self.settings, self.what)
        try:
            await prepare(client)
        except BaseException:
            if given is None:
                await close_quietly(client)
            raise
        self._client = client
        return client

    async def close(self) -> None:
        """Forget the connection; close it unless the user gave it."""
        client, self._client = self._client, None
        if client is not None and client is not self._given:
            await close_quietly(client)

    def half_open_bound(self, client: Client | None = None) -> float:
        """Seconds within which a silent connection is noticed: from the given client's
        own ping options when there is one, else from the settings'."""
        options = getattr(client or self._given, "options", None) or {}
        if "ping_interval" in options and "max_outstanding_pings" in options:
            return float(options["ping_interval"]) * (int(options["max_outstanding_pings"]) + 1)
        return self.settings.half_open_bound


class NatsAdapterBase(ConfiguredAdapter[NatsSettings, Client]):
    """What :class:`~eventbus_nats.NatsAdapter` (JetStream) and
    :class:`~eventbus_nats.NatsCoreAdapter` share: settings from a URL or made in code
    (of their own kind of NATS), the one connection (:class:`Connection`: given, or
    opened on first use) and the server's limits learnt once it is open."""

    #: Whether the subclass speaks JetStream (``nats://``) or core NATS (``nats+core://``).
    jetstream: ClassVar[bool]
    #: What the subclass is called in errors about its connection.
    role: ClassVar[str]
    #: The error for settings of the other kind, formatted with the masked URL.
    other_kind: ClassVar[str]

    settings_type = NatsSettings

    def _setup(self, client: Client | None) -> None:
        s = self.settings
        if s.jetstream != self.jetstream:  # the registry maps each scheme to its class
            raise BrokerConnectionError(self.other_kind.format(s.masked_url))
        self._connection = Connection(s, client, self.role)

    @property
    def client(self) -> Client:
        """The connection (after :meth:`connect`)."""
        return self._connection.client

    async def connect(self) -> None:
        """Connect (JetStream: and check that it answers); fail fast with the masked URL."""
        await self._ready()

    @abc.abstractmethod
    async def _ready(self) -> object:
        """The open connection (JetStream: its context), opened once."""

    def _with_limits(self, claims: Capabilities) -> Capabilities:
        """``claims`` with the connection's facts before it is open: the settings' largest
        message, and the half-open bound (PINGs every ping_interval; max_pings_out
        unanswered in a row mark the connection stale: nats-py drops it and reconnects,
        health() failing meanwhile). :meth:`_learn_limits` updates both once connected."""
        return replace(
            claims,
            max_message_bytes=self.settings.max_message_bytes,
            half_open_bound=self._connection.half_open_bound(),
        )

    def _learn_limits(self, client: Client) -> None:
        """The largest message and the half-open bound, from the connected ``client``."""
        self.capabilities = replace(
            self.capabilities,
            max_message_bytes=message_limit(self.settings, client, self.role),
            half_open_bound=self._connection.half_open_bound(client),
        )
