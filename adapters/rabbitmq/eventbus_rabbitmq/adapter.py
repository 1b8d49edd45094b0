"""The RabbitMQ adapter: aio-pika's robust connection behind the eventbus contract.

Example::

    adapter = RabbitMQAdapter("amqp://guest:guest@localhost:5672/?queue_type=quorum")
    await adapter.connect()
    await adapter.publish("orders", [envelope])
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

import aio_pika
from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aiormq.exceptions import (
    AMQPConnectionError,
    ChannelInvalidStateError,
    ChannelPreconditionFailed,
    ConnectionClosed,
    DeliveryError,
)
from aiormq.exceptions import PublishError as ReturnedError

from eventbus.adapter import Adapter, Capabilities, HealthReport, SubscribeOptions, Subscription
from eventbus.backoff import Backoff
from eventbus.envelope import Envelope
from eventbus.errors import (
    BatchPublishError,
    BrokerConnectionError,
    ConfigurationError,
    MessageTooLargeError,
    PublishError,
)

from .codec import encode, message_size
from .consumer import RabbitMQSubscription
from .provision import declare_exchange, declare_group, work_queue
from .settings import RabbitMQSettings

log = logging.getLogger("eventbus.rabbitmq")

CLOSE_TIMEOUT = 5.0
HEALTH_TIMEOUT = 1.0
SUBSCRIBE_ATTEMPTS = 8
_TRANSIENT = (AMQPConnectionError, ConnectionClosed, ChannelInvalidStateError, RuntimeError,
              TimeoutError, OSError)


class RabbitMQAdapter(Adapter):
    """RabbitMQ through aio-pika: ``amqp[s]://user:pass@host:port/vhost[?options]``.

    See ``docs/adapters/rabbitmq.md`` for every option and the delivery guarantees.
    """

    schemes = ("amqp", "amqps")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.settings = RabbitMQSettings.from_url(url)
        self.capabilities = Capabilities(
            persistent=True,
            consumer_groups=True,
            fanout=True,
            # A queue hands one consumer its messages in order; the bus's key lanes
            # keep each key in order among workers (single_active_consumer=true keeps
            # one consumer per group active, for order across a group's instances).
            ordering="per_key",
            redelivery=True,
            native_delay=True,  # TTL delay-tier queues: the broker does the waiting
            native_dead_letter=True,  # reject() dead-letters to <topic>.<group>.dlq
            replay=False,  # a queue holds only what arrived after it was declared
            headers=True,
            max_message_bytes=self.settings.max_message_bytes,
            dedupe_window=None,
            reconnect=True,
        )
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._subscriptions: set[RabbitMQSubscription] = set()
        self._connect_lock = asyncio.Lock()

    # -- connection --------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        s = self.settings
        if not s.tls:
            return None
        context = ssl.create_default_context(cafile=s.cafile)
        if s.certfile:
            context.load_cert_chain(s.certfile, s.keyfile)
        if not s.verify:  # a documented dev shortcut only
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    async def connect(self) -> None:
        """Open the robust connection and the publishing channel (confirms on)."""
        await self.ready_connection()

    async def ready_connection(self) -> AbstractRobustConnection:
        """The open connection, connecting first if needed."""
        if self._connection is not None and self._channel is not None:
            return self._connection
        async with self._connect_lock:
            if self._connection is not None and self._channel is not None:
                return self._connection
            s = self.settings
            try:
                connection = await asyncio.wait_for(
                    aio_pika.connect_robust(
                        host=s.host, port=s.port, login=s.username, password=s.password,
                        virtualhost=s.vhost, ssl=s.tls, ssl_context=self._ssl_context(),
                        timeout=s.connect_timeout, heartbeat=s.heartbeat,
                        reconnect_interval=s.reconnect_interval,
                        auth=s.auth_mechanism.lower(),
                        client_properties={"connection_name": s.client_name},
                    ),
                    s.connect_timeout,
                )
            except Exception as exc:
                raise BrokerConnectionError(
                    f"cannot connect to RabbitMQ at {s.masked_url} within "
                    f"{s.connect_timeout:g}s ({type(exc).__name__}: {exc or 'timed out'}); "
                    "check the host, port, vhost and credentials"
                ) from exc
            try:
                channel = await connection.channel(
                    publisher_confirms=True, on_return_raises=s.mandatory
                )
            except BaseException:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(connection.close(), CLOSE_TIMEOUT)
                raise
            self._connection, self._channel = connection, channel
            return connection

    async def _ready_channel(self) -> AbstractChannel:
        await self.ready_connection()
        assert self._channel is not None
        return self._channel

    async def close(self) -> None:
        """Close every subscription (unsettled messages go back), then the connection."""
        for subscription in list(self._subscriptions):
            with contextlib.suppress(Exception):
                await subscription.close()
        self._subscriptions.clear()
        connection, self._connection, self._channel = self._connection, None, None
        self._exchanges.clear()
        if connection is not None:
            try:
                await asyncio.wait_for(connection.close(), CLOSE_TIMEOUT)
            except (Exception, asyncio.CancelledError) as exc:
                # aio-pika can raise CancelledError from its own tasks when the
                # broker is gone; close() must still reach its end.
                log.warning("closing the RabbitMQ connection failed: %s: %s",
                            type(exc).__name__, exc)

    async def health(self) -> HealthReport:
        """Whether the connection and the publishing channel are open now."""
        s = self.settings
        info = {"host": f"{s.host}:{s.port}", "vhost": s.vhost, "queue_type": s.queue_type}
        try:
            await self.ready_connection()
        except Exception as exc:
            return HealthReport(False, f"{type(exc).__name__}: {exc}", info)
        connection, channel = self._connection, self._channel
        if connection is None or connection.is_closed or channel is None or channel.is_closed:
            return HealthReport(
                False, f"the connection to RabbitMQ at {s.masked_url} is down; reconnecting",
                info)
        try:
            # One round trip: a dropped connection is noticed now, not at the next
            # heartbeat.
            # (On the underlying channel: aio-pika skips declaring amq.* exchanges.)
            underlay = await channel.get_underlay_channel()
            await asyncio.wait_for(
                underlay.exchange_declare(exchange="amq.topic", passive=True), HEALTH_TIMEOUT)
        except (Exception, asyncio.CancelledError) as exc:
            return HealthReport(
                False, f"RabbitMQ at {s.masked_url} did not answer: {type(exc).__name__}: "
                f"{exc or 'timed out'}; reconnecting", info)
        return HealthReport(True, f"RabbitMQ at {s.masked_url} answered", info)

    # -- publishing --------------------------------------------------------------------

    def check_raw_size(self, topic: str, message: Message) -> None:
        """Raise MessageTooLargeError if a prepared message is over the limit."""
        size = message_size(message.headers or {}, message.content_type, message.body)
        if size > self.capabilities.max_message_bytes:
            raise MessageTooLargeError(
                f"a message for {topic!r} is {size} bytes, over the "
                f"{self.capabilities.max_message_bytes}-byte limit; nothing was sent"
            )

    async def _exchange(self, topic: str) -> AbstractExchange:
        exchange = self._exchanges.get(topic)
        if exchange is None:
            channel = await self._ready_channel()
            exchange = self._exchanges[topic] = await declare_exchange(channel, topic)
        return exchange

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        """Publish every envelope at once (persistent, mandatory) and await each confirm."""
        messages = self._encode_all(topic, envelopes)
        if not messages:
            return
        exchange = await self._guarded(topic, self._exchange(topic))
        await self._send_all(topic, envelopes, messages, exchange, None)

    async def publish_to_group(
        self, topic: str, group: str, envelopes: Sequence[Envelope]
    ) -> None:
        """Deliver ``envelopes`` to ``group``'s queue alone (through the default
        exchange), so no other group of ``topic`` sees them; the group is declared
        if new. Same confirms and size rules as :meth:`publish`."""
        messages = self._encode_all(topic, envelopes)
        if not messages:
            return
        channel = await self._guarded(topic, self._ready_channel())
        await self._guarded(topic, declare_group(channel, self.settings, topic, group))
        await self._send_all(topic, envelopes, messages, channel.default_exchange,
                             work_queue(topic, group))

    def _encode_all(self, topic: str, envelopes: Sequence[Envelope]) -> list[Message]:
        messages: list[Message] = []
        for envelope in envelopes:
            encoded = encode(envelope)
            self.check_size(topic, envelope, encoded.size)
            messages.append(Message(
                encoded.body, headers=encoded.headers, content_type=encoded.content_type,
                delivery_mode=DeliveryMode.PERSISTENT, message_id=envelope.id,
                type=envelope.type,
            ))
        return messages

    async def _send_all(self, topic: str, envelopes: Sequence[Envelope],
                        messages: list[Message], exchange: AbstractExchange,
                        routing_key: str | None) -> None:
        results = await asyncio.gather(
            *(self._send(exchange, message, routing_key or message.type or topic)
              for message in messages),
            return_exceptions=True,
        )
        failures = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
        if not failures:
            return
        if len(failures) == len(messages):
            first = next(iter(failures.values()))
            if isinstance(first, asyncio.CancelledError):
                raise first
            raise self._publish_error(topic, envelopes[0], first, everything=len(messages))
        errors = {i: self._publish_error(topic, envelopes[i], exc) for i, exc in failures.items()}
        raise BatchPublishError(
            f"{len(errors)} of {len(messages)} messages to RabbitMQ topic {topic!r} were not "
            f"confirmed (indexes {sorted(errors)}); see .failures",
            errors,
            len(messages),
        )

    async def _send(self, exchange: AbstractExchange, message: Message, key: str) -> None:
        # asyncio.timeout, not wait_for: no extra task per message (3.11's wait_for
        # wraps the coroutine in one), which is a sizeable share of a publish's CPU.
        async with asyncio.timeout(self.settings.publish_timeout):
            await exchange.publish(message, routing_key=key, mandatory=self.settings.mandatory)

    async def _guarded(self, topic: str, step: Any) -> Any:
        try:
            return await step
        except Exception as exc:
            raise self._publish_error(topic, None, exc) from exc

    def _publish_error(self, topic: str, envelope: Envelope | None, exc: BaseException,
                       everything: int = 0) -> Exception:
        if isinstance(exc, PublishError | BrokerConnectionError):
            return exc
        what = (f"{everything} message(s)" if everything
                else f"event {envelope.id} ({envelope.type})" if envelope else "a message")
        text = f"{what} to {topic!r}: {type(exc).__name__}: {exc}"
        error: Exception
        if isinstance(exc, ReturnedError):
            error = PublishError(
                f"RabbitMQ returned {text}: no queue is bound to exchange {topic!r} (no "
                "group has subscribed yet), so it was not stored; subscribe a group "
                "first, or set mandatory=false to drop such messages silently")
        elif isinstance(exc, DeliveryError):
            error = PublishError(f"RabbitMQ refused (nacked) {text}; publish again")
        else:
            error = BrokerConnectionError(
                f"RabbitMQ at {self.settings.masked_url} did not confirm {text}; the "
                "connection is down or slow, publish again")
        error.__cause__ = exc
        return error

    async def publish_to_queue(self, queue: str, message: Message) -> None:
        """Publish ``message`` straight to ``queue`` (default exchange), confirmed."""
        channel = await self._ready_channel()
        await asyncio.wait_for(
            channel.default_exchange.publish(message, routing_key=queue, mandatory=True),
            self.settings.publish_timeout,
        )

    async def publish_raw(
        self, topic: str, payload: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        """Publish ``payload`` with no CloudEvents headers (poison-message tests)."""
        exchange = await self._guarded(topic, self._exchange(topic))
        try:
            await self._send(exchange, Message(payload, delivery_mode=DeliveryMode.PERSISTENT),
                             topic)
        except Exception as exc:
            raise self._publish_error(topic, None, exc) from exc

    # -- subscribing ---------------------------------------------------------------------

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        """Declare ``options.group``'s queue on ``topic`` and start consuming it.

        Returns once the queue is bound, so anything published afterwards is kept.
        ``start_from`` has no effect beyond the first subscribe: a new group's queue
        receives what is published from then on (RabbitMQ queues do not replay).
        """
        # Long enough to outlast the robust connection's reconnect_interval (1 s):
        # retrying only while the connection is still down would not help.
        delays = iter(Backoff(initial=0.25, max_delay=2.0))
        for attempt in range(1, SUBSCRIBE_ATTEMPTS + 1):
            subscription = RabbitMQSubscription(self, topic, options)
            try:
                await subscription.start()
                break
            except Exception as exc:
                await subscription.close()
                if isinstance(exc, ChannelPreconditionFailed):
                    raise ConfigurationError(
                        f"RabbitMQ refused the queue of group {options.group!r} on {topic!r}: "
                        f"{exc}; it exists with other arguments (queue_type, "
                        "single_active_consumer): use the same options or delete the queue"
                    ) from exc
                if attempt < SUBSCRIBE_ATTEMPTS and isinstance(exc, _TRANSIENT):
                    # A quorum queue declared a moment ago may not have its replica
                    # running yet: the broker then closes the connection with
                    # INTERNAL_ERROR on basic.consume; the robust connection comes back.
                    log.info("subscribing to %s as %s failed (%s: %s); trying again",
                             topic, options.group, type(exc).__name__, exc)
                    await asyncio.sleep(next(delays))
                    continue
                if isinstance(exc, BrokerConnectionError):
                    raise
                raise BrokerConnectionError(
                    f"cannot subscribe to {topic!r} as group {options.group!r} on RabbitMQ "
                    f"at {self.settings.masked_url}: {type(exc).__name__}: {exc}"
                ) from exc
        self._subscriptions.add(subscription)
        return subscription

    def forget(self, subscription: RabbitMQSubscription) -> None:
        """Called by a subscription when it closes."""
        self._subscriptions.discard(subscription)
