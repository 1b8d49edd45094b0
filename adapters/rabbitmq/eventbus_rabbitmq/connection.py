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

from aio_pika import RobustConnection
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aio_pika.connection import make_url
from aiormq import Connection as AmqpConnection

from eventbus.adapters_util import ExceptionMap, map_exceptions, open_once, tls_context
from eventbus.errors import BrokerConnectionError

from .settings import RabbitMQSettings

log = logging.getLogger("eventbus.rabbitmq")

CLOSE_TIMEOUT = 5.0


def one_line(settings: RabbitMQSettings, exc: BaseException) -> str:
    """``Type: text`` of a client error, password scrubbed, on one line."""
    text = " ".join(str(exc).split()) or "timed out"
    return settings.scrub(f"{type(exc).__name__}: {text}")


# Whatever fails while connecting: the broker is not there, or not for these credentials.
_UNREACHABLE: ExceptionMap = {
    Exception: (
        BrokerConnectionError,
        "check the host, port, vhost and credentials, and that the port speaks AMQP",
    )
}


def half_open_bound(settings: RabbitMQSettings) -> float | None:
    """Seconds within which a connection that stopped answering is torn down and
    reconnected: aiormq gives up after ``(heartbeat + 1) * 3`` seconds without a frame
    (the broker sends one every ``heartbeat / 2``), looked at every ``heartbeat / 2``."""
    if settings.heartbeat == 0:
        return None  # no heartbeats: only health()'s round trip notices
    beat = settings.heartbeat
    return float((beat + 1) * AmqpConnection.HEARTBEAT_GRACE_MULTIPLIER + max(1, beat // 2))


class Link:
    """The ``role`` ("publish" or "consume") connection: opened on first use, or the
    ``given`` one (the user's, used as it is and never closed here)."""

    def __init__(
        self, settings: RabbitMQSettings, role: str, given: AbstractRobustConnection | None = None
    ) -> None:
        self.settings = settings
        self.role = role
        self.given = given
        self.connection: AbstractRobustConnection | None = given
        self._lock = asyncio.Lock()
        self._probe: AbstractChannel | None = None

    async def open(self) -> AbstractRobustConnection:
        """The open connection, connecting first (within ``connect_timeout``) if needed."""
        return await open_once(self._lock, lambda: self.connection, self._connect)

    async def _connect(self) -> AbstractRobustConnection:
        s = self.settings
        url = make_url(
            host=s.host,
            port=s.port,
            login=s.username,
            password=s.password,
            virtualhost=s.vhost,
            ssl=s.tls,
            heartbeat=s.heartbeat,
            reconnect_interval=s.reconnect_interval,
            auth=s.auth_mechanism.lower(),
        )
        context = tls_context(s.tls_ca, s.tls_cert, s.tls_key, s.tls_verify) if s.tls else None
        connection = RobustConnection(
            url,
            ssl_context=context,
            client_properties={"connection_name": f"{s.client_name} ({self.role})"},
        )
        try:
            # No chain: the client's exceptions may quote the URL it built.
            with map_exceptions(
                _UNREACHABLE,
                scrub=s.scrub,
                chain=False,
                what=(f"connecting to RabbitMQ at {s.masked_url} (within {s.connect_timeout:g}s)"),
            ):
                await asyncio.wait_for(
                    connection.connect(timeout=s.connect_timeout), s.connect_timeout
                )
        except BaseException:
            await discard(connection)
            raise
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
        """Close the connection (reconnect task included) within ``CLOSE_TIMEOUT``; of a
        given connection only the probe channel this link opened on it."""
        connection, probe, self._probe = self.connection, self._probe, None
        if self.given is not None:
            if probe is not None:
                await _close_quietly(probe)
            return
        self.connection = None
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
        if isinstance(exc, asyncio.CancelledError) and current is not None and current.cancelling():
            raise


async def _close_quietly(channel: AbstractChannel) -> None:
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT)
