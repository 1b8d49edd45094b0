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

With several nodes in the URL (a cluster), the first connect tries each in turn and
:class:`NodeRotatingConnection` makes every reconnect attempt go to the next node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aio_pika import RobustConnection
from aio_pika.abc import AbstractChannel, AbstractRobustConnection
from aio_pika.connection import make_url
from aiormq import Connection as AmqpConnection
from yarl import URL

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


class NodeRotatingConnection(RobustConnection):
    """A robust connection that tries the next node of ``urls`` at each reconnect
    attempt (round robin), so losing the node it was connected to moves it to another.

    aio-pika (9.x, 10.x) clears ``transport`` at the start of every connection
    attempt; that is where the URL is moved on. ``test_rabbitmq_cluster_urls`` pins it.
    """

    def __init__(self, urls: list[URL], start: int, **kwargs: object) -> None:
        self._urls = urls
        self._node = start
        self._attempts = -1  # the constructor's own clearing is no attempt
        super().__init__(urls[start], **kwargs)  # type: ignore[arg-type]

    @property  # type: ignore[override]
    def transport(self) -> object:
        return self.__dict__.get("_transport")

    @transport.setter
    def transport(self, value: object) -> None:
        urls = getattr(self, "_urls", None)
        if value is None and urls is not None and not getattr(self, "_close_called", False):
            if self._attempts:
                self._node = (self._node + 1) % len(urls)
                self.url = urls[self._node]
            self._attempts += 1
        self.__dict__["_transport"] = value


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
        """Connect to the first node that answers (each within ``connect_timeout``)."""
        nodes = len(self.settings.addresses)
        for start in range(nodes):
            try:
                return await self._connect_to(start)
            except BrokerConnectionError:
                if start == nodes - 1:
                    raise
        raise AssertionError("unreachable")

    async def _connect_to(self, start: int) -> AbstractRobustConnection:
        s = self.settings
        urls = [
            make_url(
                host=host,
                port=port,
                login=s.username,
                password=s.password,
                virtualhost=s.vhost,
                ssl=s.tls,
                heartbeat=s.heartbeat,
                reconnect_interval=s.reconnect_interval,
                auth=s.auth_mechanism.lower(),
            )
            for host, port in s.addresses
        ]
        context = tls_context(s.tls_ca, s.tls_cert, s.tls_key, s.tls_verify) if s.tls else None
        properties = {"connection_name": f"{s.client_name} ({self.role})"}
        connection: RobustConnection
        if len(urls) == 1:
            connection = RobustConnection(
                urls[0], ssl_context=context, client_properties=properties
            )
        else:
            connection = NodeRotatingConnection(
                urls, start, ssl_context=context, client_properties=properties
            )
        try:
            # No chain: the client's exceptions may quote the URL it built.
            with map_exceptions(
                _UNREACHABLE,
                scrub=s.scrub,
                chain=False,
                what=(
                    f"connecting to RabbitMQ at {s.masked_url}"
                    + (f" (node {start + 1} of {len(urls)})" if len(urls) > 1 else "")
                    + f" (within {s.connect_timeout:g}s)"
                ),
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
                asyncio.get_running_loop().create_task(close_quietly(channel))
                raise

    async def close(self) -> None:
        """Close the connection (reconnect task included) within ``CLOSE_TIMEOUT``; of a
        given connection only the probe channel this link opened on it."""
        connection, probe, self._probe = self.connection, self._probe, None
        if self.given is not None:
            if probe is not None:
                await close_quietly(probe)
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


async def close_quietly(channel: AbstractChannel) -> None:
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT)
