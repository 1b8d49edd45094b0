"""One robust AMQP connection of the adapter, opened and closed within bounds.

The adapter keeps two (RabbitMQ's own guidance): one for publishing and one for
consuming. During a memory or disk alarm the broker stops reading from every
connection that publishes (``connection.blocked``); were acks on that connection too,
one handler that publishes would stop every subscription of the process from acking,
so the queues whose backlog keeps the alarm on could not drain.

aio-pika's ``connect_robust`` starts a reconnect task before its first connect
returns; cancelling the call (a timeout) leaves that task retrying for ever, and it
swallows the cancellation of the event loop's shutdown. :class:`Link` builds the
connection itself so a first connect that does not finish in ``connect_timeout`` closes
it, reconnect task included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from aio_pika import RobustConnection
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aio_pika.connection import make_url
from aiormq import Connection as AmqpConnection

from eventbus.errors import BrokerConnectionError

from .settings import RabbitMQSettings

log = logging.getLogger("eventbus.rabbitmq")

CLOSE_TIMEOUT = 5.0


def one_line(settings: RabbitMQSettings, exc: BaseException) -> str:
    """``Type: text`` of a client error, password scrubbed, on one line."""
    text = " ".join(str(exc).split()) or "timed out"
    return settings.scrub(f"{type(exc).__name__}: {text}")


def ssl_context(settings: RabbitMQSettings) -> ssl.SSLContext | None:
    """The TLS context of ``amqps://`` URLs (``None`` for plain AMQP)."""
    if not settings.tls:
        return None
    context = ssl.create_default_context(cafile=settings.cafile)
    if settings.certfile:
        context.load_cert_chain(settings.certfile, settings.keyfile)
    if not settings.verify:  # a documented dev shortcut only
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def half_open_bound(settings: RabbitMQSettings) -> float | None:
    """Seconds within which a connection that stopped answering is torn down and
    reconnected: aiormq gives up after ``(heartbeat + 1) * 3`` seconds without a frame
    (the broker sends one every ``heartbeat / 2``), looked at every ``heartbeat / 2``."""
    if settings.heartbeat == 0:
        return None  # no heartbeats: only health()'s round trip notices
    beat = settings.heartbeat
    return float((beat + 1) * AmqpConnection.HEARTBEAT_GRACE_MULTIPLIER + max(1, beat // 2))


class Link:
    """The ``role`` ("publish" or "consume") connection: opened on first use."""

    def __init__(self, settings: RabbitMQSettings, role: str) -> None:
        self.settings = settings
        self.role = role
        self.connection: AbstractRobustConnection | None = None
        self._lock = asyncio.Lock()
        self._probe: AbstractChannel | None = None

    async def open(self) -> AbstractRobustConnection:
        """The open connection, connecting first (within ``connect_timeout``) if needed."""
        if self.connection is not None:
            return self.connection
        async with self._lock:
            if self.connection is not None:
                return self.connection
            s = self.settings
            url = make_url(
                host=s.host, port=s.port, login=s.username, password=s.password,
                virtualhost=s.vhost, ssl=s.tls, heartbeat=s.heartbeat,
                reconnect_interval=s.reconnect_interval, auth=s.auth_mechanism.lower(),
            )
            connection = RobustConnection(
                url, ssl_context=ssl_context(s),
                client_properties={"connection_name": f"{s.client_name} ({self.role})"},
            )
            try:
                await asyncio.wait_for(connection.connect(timeout=s.connect_timeout),
                                       s.connect_timeout)
            except BaseException as exc:
                await discard(connection)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise BrokerConnectionError(
                    f"cannot connect to RabbitMQ at {s.masked_url} within "
                    f"{s.connect_timeout:g}s ({one_line(s, exc)}); check the host, port, "
                    "vhost and credentials, and that the port speaks AMQP"
                ) from None  # the client's chain may quote the URL it built
            self.connection = connection
            return connection

    async def probe(self, timeout: float) -> None:
        """One round trip on this connection (a passive declare of ``amq.topic``), so a
        connection that stopped answering shows now, not at the next heartbeat."""
        connection = self.connection
        if connection is None or connection.is_closed:
            raise BrokerConnectionError(f"the {self.role} connection is closed")
        async with asyncio.timeout(timeout):
            channel = self._probe
            if channel is None or channel.is_closed:
                channel = self._probe = await connection.channel(publisher_confirms=False)
            try:
                # On the underlying channel: aio-pika skips declaring amq.* exchanges.
                underlay = await channel.get_underlay_channel()
                await underlay.exchange_declare(exchange="amq.topic", passive=True)
            except BaseException:
                # A late reply must not answer the next probe's question.
                self._probe = None
                asyncio.get_running_loop().create_task(_close_quietly(channel))
                raise

    async def close(self) -> None:
        """Close the connection (reconnect task included) within ``CLOSE_TIMEOUT``."""
        connection, self.connection, self._probe = self.connection, None, None
        if connection is not None:
            await discard(connection)


async def discard(connection: AbstractRobustConnection) -> None:
    """Close ``connection`` however it fails; aio-pika can raise ``CancelledError``
    from its own tasks when the broker is gone, and close() must reach its end."""
    try:
        await asyncio.wait_for(connection.close(), CLOSE_TIMEOUT)
    except (Exception, asyncio.CancelledError) as exc:
        log.warning("closing a RabbitMQ connection failed: %s: %s", type(exc).__name__, exc)
        current = asyncio.current_task()
        if isinstance(exc, asyncio.CancelledError) and current is not None and \
                current.cancelling():
            raise


async def _close_quietly(channel: AbstractChannel) -> None:
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT)
