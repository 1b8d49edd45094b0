"""One nats-py connection per adapter: options, fail-fast connect, safe close, codec.

nats-py reconnects by itself after a dropped connection (forever, every
``reconnect_time_wait``) and re-creates its subscriptions, so neither adapter
has to; the initial connect, in contrast, fails fast with the masked URL.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from typing import Any

from nats.aio.client import Client

from eventbus import codec
from eventbus.envelope import Envelope
from eventbus.errors import BrokerConnectionError

from .settings import NatsSettings
from .wire import FastClient, header_block

log = logging.getLogger("eventbus.nats")

HEADER_PREFIX = codec.HTTP_PREFIX
"""The CloudEvents NATS binding maps attributes to ``ce-`` headers, as HTTP does."""
MSG_ID = "Nats-Msg-Id"
_FRAMING = len("NATS/1.0\r\n\r\n")


def wire_size(headers: Mapping[str, str], body: bytes) -> int:
    """Bytes the server counts against ``max_payload``: the header block plus the body."""
    size = _FRAMING + len(body)
    for name, value in headers.items():
        size += len(name.encode()) + len(value.encode()) + 4  # "name: value\r\n"
    return size


def encode(envelope: Envelope) -> tuple[dict[str, str], bytes]:
    """Binary-mode headers and body of ``envelope`` (CloudEvents NATS binding)."""
    return codec.encode_binary(envelope, HEADER_PREFIX)


def encode_block(envelope: Envelope, msg_id: bool) -> tuple[bytes, bytes]:
    """The header block (with ``Nats-Msg-Id`` if ``msg_id``) and body of ``envelope``;
    their lengths together are what the server counts against ``max_payload``."""
    headers, body = codec.encode_binary(envelope, HEADER_PREFIX)
    if msg_id:
        headers[MSG_ID] = envelope.id
    return header_block(headers), body


def decode(headers: dict[str, str] | None, body: bytes) -> tuple[Envelope | None, str | None]:
    """The envelope of a message, or ``None`` and why it cannot be read.

    ``headers`` is the message's own dict (nats-py builds one per message): the
    transport header ``Nats-Msg-Id`` is removed from it in place.
    """
    if not headers:
        return None, "not a binary-mode CloudEvent: the message has no headers"
    headers.pop(MSG_ID, None)  # transport header, not an attribute
    try:
        return codec.decode_binary(headers, body, HEADER_PREFIX), None
    except Exception as exc:  # DecodeError, or a value the envelope refuses
        return None, f"{type(exc).__name__}: {exc}"


def tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    if not settings.tls:
        return None
    context = ssl.create_default_context(cafile=settings.tls_ca)
    if settings.tls_cert and settings.tls_key:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


async def open_connection(settings: NatsSettings, what: str) -> Client:
    """Connect (fail fast), then let nats-py reconnect forever after drops."""

    async def on_error(exc: Exception) -> None:
        log.debug("NATS %s at %s: %s: %s", what, settings.masked_url, type(exc).__name__, exc)

    async def on_disconnected() -> None:
        log.info("NATS %s lost its connection to %s; reconnecting", what, settings.masked_url)

    async def on_reconnected() -> None:
        log.info("NATS %s reconnected to %s", what, settings.masked_url)

    options: dict[str, Any] = {
        "servers": settings.server_urls(),
        "name": settings.name,
        "connect_timeout": settings.connect_timeout,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "ping_interval": 5,
        "max_outstanding_pings": 2,
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
    client = FastClient()
    try:
        # nats-py keeps trying refused servers (allow_reconnect); connect_timeout
        # per server bounds the whole initial connect, so it fails fast.
        await asyncio.wait_for(client.connect(**options),
                               settings.connect_timeout * len(settings.servers) + 0.5)
    except Exception as exc:
        await close_quietly(client)
        raise BrokerConnectionError(
            f"cannot connect to NATS at {settings.masked_url} within "
            f"{settings.connect_timeout:g}s ({type(exc).__name__}: {exc or 'timed out'}); "
            "check that the server is reachable and the credentials are right"
        ) from exc
    return client


async def close_quietly(client: Client, timeout: float = 5.0) -> None:
    """Flush and close ``client``; never hangs, never raises (even CancelledError
    raised by the client's own tasks while the server is unreachable)."""
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
