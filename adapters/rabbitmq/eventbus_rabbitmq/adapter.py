"""The RabbitMQ adapter: aio-pika's robust connections behind the eventbus contract.

Example::

    adapter = RabbitMQAdapter("amqp://guest:guest@localhost:5672/?queue_type=quorum")
    await adapter.connect()
    await adapter.publish("orders", [envelope])

    # Or with settings made in code and a robust connection of your own (used as it
    # is, for publishing and consuming alike, and never closed by the adapter):
    adapter = RabbitMQAdapter(settings=RabbitMQSettings(host="mq"), client=connection)

(Over 400 lines: publishing here has four routes, to an exchange, to one group's queue,
raw bytes and a parked retry, which share the confirm, size and unroutable handling
below; split apart, each would need the adapter's channel and caches passed around.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from aio_pika import DeliveryMode, Exchange, Message
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from aiormq.exceptions import (
    AMQPConnectionError,
    ChannelAccessRefused,
    ChannelInvalidStateError,
    ChannelPreconditionFailed,
    ConnectionClosed,
    DeliveryError,
)
from aiormq.exceptions import PublishError as ReturnedError

from eventbus.adapter import Capabilities, HealthReport, SubscribeOptions, Subscription
from eventbus.adapters_util import ConfiguredAdapter, map_exceptions, open_once
from eventbus.backoff import Backoff
from eventbus.envelope import Envelope
from eventbus.errors import (
    BatchPublishError,
    BrokerConnectionError,
    EventBusError,
    MessageTooLargeError,
    PublishError,
)
from eventbus.raw_message import RawMessage

from .codec import encode, message_size, raw_message
from .connection import Link, close_quietly, half_open_bound, one_line
from .consumer import RabbitMQSubscription
from .provision import (
    declare_exchange,
    declare_group,
    queue_depth,
    require,
    scratch_channel,
    work_queue,
)
from .refusals import learn_limit, precondition_error, publish_error, subscribe_error
from .settings import RabbitMQSettings

log = logging.getLogger("eventbus.rabbitmq")

HEALTH_TIMEOUT = 1.0
# How long a message returned unroutable by a topic that routed before is sent again.
UNROUTABLE_GRACE = 3.0
SUBSCRIBE_ATTEMPTS = 8
_TRANSIENT = (
    AMQPConnectionError,
    ConnectionClosed,
    ChannelInvalidStateError,
    RuntimeError,
    TimeoutError,
    OSError,
)


class RabbitMQAdapter(ConfiguredAdapter[RabbitMQSettings, AbstractRobustConnection]):
    """RabbitMQ through aio-pika: ``amqp[s]://user:pass@host:port/vhost[?options]``.

    ``RabbitMQAdapter(url)``, or ``RabbitMQAdapter(settings=..., client=...)``: settings
    made in code, and optionally an aio-pika robust connection you opened yourself, used
    as it is for publishing and consuming (so a memory alarm that blocks its publishing
    blocks its acks too, see connection.py) and never closed by the adapter. See
    ``docs/adapters/rabbitmq.md`` for every option and the delivery guarantees.
    """

    schemes = ("amqp", "amqps")
    settings_type = RabbitMQSettings

    def _setup(self, client: AbstractRobustConnection | None) -> None:
        # A durable broker (per-key order: a queue hands one consumer its messages in
        # order, the bus's key lanes keep each key in order among workers, and
        # single_active_consumer=true keeps one consumer per group active, for order
        # across a group's instances; native delay: TTL delay-tier queues, the broker
        # does the waiting), except:
        self.capabilities = replace(
            Capabilities.DURABLE,
            max_message_bytes=self.settings.max_message_bytes,
            half_open_bound=half_open_bound(self.settings),
            native_dead_letter=True,  # reject() dead-letters to <topic>.<group>.dlq
            replay=False,  # a queue holds only what arrived after it was declared
            # RabbitMQ's consumer_timeout cannot be extended by a client (no "in
            # progress" in AMQP 0-9-1, no per-queue timeout before 3.12): a handler
            # outliving it is redelivered; see docs/adapters/rabbitmq.md.
            lease=False,
            browse=False,  # reading a queue consumes it
        )
        # Publishing and consuming on separate connections: a memory alarm blocks
        # the publishing one, and must not stop the consumers' acks (connection.py).
        self._publisher = Link(self.settings, "publish", client)
        self._consumer = Link(self.settings, "consume", client)
        self._channel: AbstractChannel | None = None
        self._channel_lock = asyncio.Lock()
        self._exchanges: dict[str, AbstractExchange] = {}
        self._groups: set[tuple[str, str]] = set()
        self._routed: set[str] = set()  # exchanges a message was routed from
        self._subscriptions: set[RabbitMQSubscription] = set()
        self._retired: set[asyncio.Task[None]] = set()  # channels closing after a nack

    # -- connections -------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the publishing connection and channel (confirms on), within
        ``connect_timeout``; the consuming connection opens with the first subscribe."""
        await self._publishing_channel()

    async def consuming_connection(self) -> AbstractRobustConnection:
        """The connection subscriptions consume on (opened within ``connect_timeout``)."""
        return await self._consumer.open()

    async def _publishing_channel(self) -> AbstractChannel:
        return await open_once(self._channel_lock, self._usable_channel, self._open_channel)

    def _usable_channel(self) -> AbstractChannel | None:
        channel = self._channel
        return channel if channel is not None and not channel.is_closed else None

    async def _open_channel(self) -> AbstractChannel:
        if self._channel is not None:
            # aio-pika restores a robust channel after a reconnect; one the connection
            # came back without (its restore failed, e.g. after a long outage) would
            # fail every publish for good. While the connection is down this raises
            # (the bus publishes again); once it is up, the channel is opened anew.
            link = self._publisher.connection
            if link is None or link.is_closed:
                raise BrokerConnectionError(
                    f"the publishing connection to RabbitMQ at {self.settings.masked_url}"
                    " is down; reconnecting, publish again"
                )
            self._channel = None
            self._exchanges.clear()
        connection = await self._publisher.open()
        s = self.settings
        with map_exceptions(
            {Exception: BrokerConnectionError},
            hint="try again",
            scrub=s.scrub,
            chain=False,
            what=(
                f"opening a channel on RabbitMQ at {s.masked_url} (within {s.connect_timeout:g}s)"
            ),
        ):
            channel = await asyncio.wait_for(
                connection.channel(publisher_confirms=True, on_return_raises=s.mandatory),
                s.connect_timeout,
            )
        self._channel = channel
        return channel

    def _retire(self, channel: AbstractChannel) -> None:
        """After the broker nacked a publish on ``channel``: the next publish opens a
        new publishing channel, and this one is closed.

        RabbitMQ 3.10 keeps, per channel, a client of each quorum queue it routes to,
        made from the queue's record when the channel first routes there. A channel that
        first publishes while the queue's leader node has just died (its record still
        names that node) nacks every later publish to the queue for as long as that
        node stays down (its first enqueue asks the dead node, fails, and never asks
        another). A new channel reads the record again, by then naming the new leader.
        A nack for another reason (a full queue with ``x-overflow=reject-publish``)
        costs one channel open."""
        if channel is not self._channel:
            return  # retired already (a batch's other nacks), or not the publishing one
        log.warning(
            "RabbitMQ at %s nacked a publish; the next publish goes on a new channel "
            "(a quorum queue's leader may have moved)",
            self.settings.masked_url,
        )
        self._channel = None
        self._exchanges.clear()
        task = asyncio.get_running_loop().create_task(self._close_later(channel))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _close_later(self, channel: AbstractChannel) -> None:
        """Close a retired channel once the confirms of what it still carries are in
        (within ``publish_timeout``); closing it at once would fail those publishes."""
        await asyncio.sleep(self.settings.publish_timeout)
        await close_quietly(channel)

    async def close(self) -> None:
        """Close every subscription (unsettled messages go back), then the connections;
        each step is bounded, so close() returns even when the broker does not answer."""
        for subscription in list(self._subscriptions):
            try:
                await subscription.close()
            except Exception as exc:
                log.warning(
                    "closing a RabbitMQ subscription failed: %s", one_line(self.settings, exc)
                )
        self._subscriptions.clear()
        for task in list(self._retired):
            task.cancel()  # their channels close with the connection
        self._channel = None
        self._exchanges.clear()
        self._groups.clear()
        await asyncio.gather(self._consumer.close(), self._publisher.close())

    async def health(self) -> HealthReport:
        """Whether both connections answer a round trip now (the consuming one once a
        subscription opened it); a frozen connection shows within ``HEALTH_TIMEOUT``."""
        s = self.settings
        info = {"host": f"{s.host}:{s.port}", "vhost": s.vhost, "queue_type": s.queue_type}
        try:
            channel = await self._publishing_channel()
        except Exception as exc:
            return HealthReport(False, one_line(s, exc), info)
        links = [self._publisher]
        if self._consumer.connection is not None:
            links.append(self._consumer)
        for link in links:
            connection = link.connection
            if (
                connection is None
                or connection.is_closed
                or (link is self._publisher and channel.is_closed)
            ):
                return HealthReport(
                    False,
                    f"the {link.role} connection to RabbitMQ at "
                    f"{s.masked_url} is down; reconnecting",
                    info,
                )
            try:
                await link.probe(HEALTH_TIMEOUT)
            except (Exception, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError) and _cancelling():
                    raise
                return HealthReport(
                    False,
                    f"RabbitMQ at {s.masked_url} did not answer on the {link.role} "
                    f"connection within {HEALTH_TIMEOUT:g}s ({one_line(s, exc)}); a "
                    "connection that stays silent is reconnected",
                    info,
                )
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

    def _learn(self, exc: BaseException) -> None:
        """After the broker refused a message for its size, refuse the next one over its
        limit before sending (refusals.learn_limit)."""
        self.capabilities = learn_limit(self.capabilities, exc, self.settings.masked_url)

    async def _exchange(self, topic: str) -> AbstractExchange:
        exchange = self._exchanges.get(topic)
        if exchange is None:
            channel = await self._publishing_channel()
            if self.settings.provision:
                exchange = await asyncio.wait_for(
                    declare_exchange(channel, topic), self.settings.publish_timeout
                )
            else:
                await require(await self._publisher.open(), self.settings, exchanges=[topic])
                exchange = await channel.get_exchange(topic, ensure=False)
            self._exchanges[topic] = exchange
        return exchange

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        """Publish every envelope at once (persistent, mandatory) and await each confirm."""
        messages = self._encode_all(topic, envelopes)
        if not messages:
            return
        exchange = await self._guarded(topic, self._exchange(topic))
        await self._send_all(topic, envelopes, messages, exchange, None)

    async def publish_to_group(self, topic: str, group: str, envelopes: Sequence[Envelope]) -> None:
        """Deliver ``envelopes`` to ``group``'s queue alone (through the default
        exchange), so no other group of ``topic`` sees them; the group is declared
        if new. Same confirms and size rules as :meth:`publish`.

        A queue that exists is used as it is (its type is the broker's business, so a
        replay without ``queue_type=quorum`` reaches a quorum group); one declared with
        other arguments than the URL's raises :class:`ConfigurationError`."""
        messages = self._encode_all(topic, envelopes)
        if not messages:
            return
        channel = await self._guarded(topic, self._publishing_channel())
        await self._guarded(topic, self._ensure_group(topic, group))
        try:
            await self._send_all(
                topic, envelopes, messages, channel.default_exchange, work_queue(topic, group)
            )
        except PublishError:
            self._groups.discard((topic, group))  # gone? the next call declares it again
            raise

    async def _ensure_group(self, topic: str, group: str) -> None:
        if (topic, group) in self._groups:
            return
        connection = await self._publisher.open()
        queue = work_queue(topic, group)
        timeout = self.settings.publish_timeout
        if not self.settings.provision:
            await require(connection, self.settings, queues=[queue])
        try:
            if await queue_depth(connection, queue, timeout) is None:
                async with scratch_channel(connection, timeout) as channel:
                    await declare_group(channel, self.settings, topic, group)
        except ChannelPreconditionFailed as exc:
            raise precondition_error(self.settings, queue, exc) from None
        self._groups.add((topic, group))

    def _encode_all(self, topic: str, envelopes: Sequence[Envelope]) -> list[Message]:
        messages: list[Message] = []
        for envelope in envelopes:
            encoded = encode(envelope, self.settings.binding)
            self.check_size(topic, envelope, encoded.size)
            messages.append(
                Message(
                    encoded.body,
                    headers=encoded.headers,
                    content_type=encoded.content_type,
                    delivery_mode=DeliveryMode.PERSISTENT,
                    message_id=envelope.id,
                    type=envelope.type,
                )
            )
        return messages

    async def _send_all(
        self,
        topic: str,
        envelopes: Sequence[Envelope],
        messages: list[Message],
        exchange: AbstractExchange,
        routing_key: str | None,
    ) -> None:
        results = await asyncio.gather(
            *(
                self._send(exchange, message, routing_key or message.type or topic)
                for message in messages
            ),
            return_exceptions=True,
        )
        failures = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
        if not failures:
            return
        for exc in failures.values():
            self._learn(exc)
        if len(failures) == len(messages):
            first = next(iter(failures.values()))
            if isinstance(first, asyncio.CancelledError):
                raise first
            what = f"{len(messages)} message(s)" if len(messages) > 1 else _event(envelopes[0])
            raise publish_error(self.settings, topic, what, first)
        errors = {
            i: publish_error(self.settings, topic, _event(envelopes[i]), exc)
            for i, exc in failures.items()
        }
        raise BatchPublishError.partial(errors, len(messages), f"RabbitMQ topic {topic!r}")

    async def _send(self, exchange: AbstractExchange, message: Message, key: str) -> None:
        # asyncio.timeout, not wait_for: no extra task per message (3.11's wait_for
        # wraps the coroutine in one), which is a sizeable share of a publish's CPU.
        async with asyncio.timeout(self.settings.publish_timeout):
            try:
                await exchange.publish(message, routing_key=key, mandatory=self.settings.mandatory)
            except ReturnedError:
                if exchange.name not in self._routed:
                    raise
                await self._send_again(exchange, message, key)
            except DeliveryError:
                if isinstance(exchange, Exchange):  # always: aio-pika's, with its channel
                    self._retire(exchange.channel)
                raise
            else:
                self._routed.add(exchange.name)

    async def _send_again(self, exchange: AbstractExchange, message: Message, key: str) -> None:
        """A topic whose messages were routed before came back unroutable: a group's
        queue is gone for a moment (deleted underneath: the robust channel declares it
        again within ``reconnect_interval``). Returned messages were not stored, so
        sending them again for a short while duplicates nothing."""
        deadline = time.monotonic() + max(UNROUTABLE_GRACE, 3 * self.settings.reconnect_interval)
        delays = iter(Backoff(initial=0.1, max_delay=0.5, jitter=0.0))
        while True:
            await asyncio.sleep(next(delays))
            try:
                await exchange.publish(message, routing_key=key, mandatory=True)
                return
            except ReturnedError:
                if time.monotonic() >= deadline:
                    raise

    async def _guarded(self, topic: str, step: Any) -> Any:
        try:
            return await step
        except Exception as exc:
            raise publish_error(self.settings, topic, "a message", exc) from None

    async def publish_to_queue(self, queue: str, message: Message) -> None:
        """Publish ``message`` straight to ``queue`` (default exchange), confirmed; on
        the publishing connection, so a blocked publish never holds up an ack."""
        self.check_raw_size(queue, message)
        try:
            channel = await self._publishing_channel()
            async with asyncio.timeout(self.settings.publish_timeout):
                try:
                    await channel.default_exchange.publish(
                        message, routing_key=queue, mandatory=True
                    )
                except ReturnedError:
                    raise
                except DeliveryError:
                    self._retire(channel)
                    raise
        except Exception as exc:
            self._learn(exc)
            raise publish_error(self.settings, queue, "a message", exc) from None

    async def publish_raw(self, topic: str, message: RawMessage) -> None:
        """Publish ``message``'s payload as a producer that does not speak CloudEvents
        would: its headers become AMQP headers (``content-type`` the message property),
        and a foreign message's dead letter is replayed this way, as it arrived."""
        amqp_message = raw_message(message.payload, message.headers)
        self.check_raw_size(topic, amqp_message)
        exchange = await self._guarded(topic, self._exchange(topic))
        try:
            await self._send(exchange, amqp_message, topic)
        except Exception as exc:
            self._learn(exc)
            raise publish_error(self.settings, topic, "a raw message", exc) from None

    # -- subscribing ---------------------------------------------------------------------

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        """Declare ``options.group``'s queue on ``topic`` and start consuming it.

        Returns once the queue is bound, so anything published afterwards is kept.
        ``start_from`` has no effect beyond the first subscribe: a new group's queue
        receives what is published from then on (RabbitMQ queues do not replay).
        With ``provision=false`` nothing is declared: a missing queue (or exchange, or
        delay tier queue) is a :class:`~eventbus.errors.ProvisioningError`.
        """
        # Long enough to outlast the robust connection's reconnect_interval (1 s):
        # retrying only while the connection is still down would not help.
        delays = iter(Backoff(initial=0.25, max_delay=2.0))
        # Each try is bounded: a channel or declaration the broker never answers must
        # not hold bus.start() for ever.
        bound = max(10.0, 2 * self.settings.connect_timeout)
        for attempt in range(1, SUBSCRIBE_ATTEMPTS + 1):
            subscription = RabbitMQSubscription(self, topic, options)
            try:
                async with asyncio.timeout(bound):
                    await subscription.start()
                break
            except Exception as exc:
                await subscription.close()
                if isinstance(exc, EventBusError):
                    raise  # no such DLQ topic, the connect failed: said already
                refused = isinstance(exc, ChannelPreconditionFailed | ChannelAccessRefused)
                if attempt < SUBSCRIBE_ATTEMPTS and isinstance(exc, _TRANSIENT) and not refused:
                    # A quorum queue declared a moment ago may not have its replica
                    # running yet: the broker then closes the connection with
                    # INTERNAL_ERROR on basic.consume; the robust connection comes back.
                    log.info(
                        "subscribing to %s as %s failed (%s); trying again",
                        topic,
                        options.group,
                        one_line(self.settings, exc),
                    )
                    await asyncio.sleep(next(delays))
                    continue
                raise subscribe_error(
                    self.settings, topic, options.group, subscription.queue_name, exc
                ) from None
        self._subscriptions.add(subscription)
        return subscription

    def forget(self, subscription: RabbitMQSubscription) -> None:
        """Called by a subscription when it closes."""
        self._subscriptions.discard(subscription)


def _event(envelope: Envelope) -> str:
    return f"event {envelope.id} ({envelope.type})"


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
