"""One nats-py connection per adapter: options, fail-fast connect, safe close.

nats-py reconnects by itself after a dropped connection (forever, every
``reconnect_time_wait``) and re-creates its subscriptions, so neither adapter
has to; the initial connect, in contrast, fails fast with the masked URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from typing import Any

from nats import errors as nats_errors
from nats.aio.client import Client

from eventbus.errors import BrokerConnectionError

from .settings import NatsSettings
from .wire import FastClient

log = logging.getLogger("eventbus.nats")

def tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    if not settings.tls:
        return None
    context = ssl.create_default_context(cafile=settings.tls_ca)
    if settings.tls_cert and settings.tls_key:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


def _why(exc: BaseException, settings: NatsSettings) -> str:
    """One phrase saying why a first connect attempt failed."""
    if isinstance(exc, ConnectionRefusedError):
        return f"the connection was refused ({exc.strerror or exc}): is nats-server running there?"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return (f"the server did not answer within connect_timeout={settings.connect_timeout:g}s "
                "(it accepts TCP but does not speak NATS, or the path drops packets)")
    if isinstance(exc, nats_errors.AuthorizationError) or "authorization" in str(exc).lower():
        return "the server refused the credentials (authorization violation)"
    return f"{type(exc).__name__}: {exc}"


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
                log.warning("NATS %s at %s: nats-py dropped a message for a slow subscription "
                            "on %r (its pending limits were reached)", what,
                            settings.masked_url, exc.subject)
            return
        log.debug("NATS %s at %s: %s: %s", what, settings.masked_url, type(exc).__name__, exc)

    async def on_disconnected() -> None:
        if client.closing:
            log.debug("NATS %s closed its connection to %s", what, settings.masked_url)
        elif client.is_closed:
            log.warning("NATS %s: the connection to %s was closed and will not be "
                        "re-established (%s)", what, settings.masked_url, client.last_error)
        else:
            log.info("NATS %s lost its connection to %s; reconnecting", what,
                     settings.masked_url)

    async def on_reconnected() -> None:
        log.info("NATS %s reconnected to %s", what, settings.masked_url)

    options: dict[str, Any] = {
        "servers": settings.server_urls(),
        "name": settings.name,
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
    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
    connected = False
    connecting = asyncio.ensure_future(client.connect(**options))
    failed = asyncio.ensure_future(all_failed.wait())
    try:
        # A safety net above connect_timeout per server, for what the error count misses.
        done, _ = await asyncio.wait(
            {connecting, failed}, timeout=settings.connect_timeout * len(settings.servers) + 0.5,
            return_when=asyncio.FIRST_COMPLETED)
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
    why = _why(exc, settings) if exc is not None else (
        f"no answer within {settings.connect_timeout:g}s per server")
    servers = "" if len(settings.servers) == 1 else f" (all {len(settings.servers)} servers failed)"
    raise BrokerConnectionError(
        f"cannot connect to NATS at {settings.masked_url}{servers}: {why}"
    ) from exc


def message_limit(settings: NatsSettings, client: Client, what: str) -> int:
    """The largest message to send: ``max_message_bytes``, lowered to the server's
    ``max_payload`` (from its INFO at connect), which the server enforces by
    closing the connection of a client that sends more."""
    limit = settings.max_message_bytes
    server = client.max_payload
    if server and server < limit:
        log.info("NATS %s: the server at %s takes messages of at most %d bytes (max_payload); "
                 "max_message_bytes=%d lowered to that", what, settings.masked_url, server, limit)
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
