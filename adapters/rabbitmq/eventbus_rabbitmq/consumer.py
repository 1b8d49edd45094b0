"""A subscription: one consumer on the group's queue, on its own channel.

- ``basic.qos(prefetch)`` bounds the unsettled deliveries the broker hands this
  channel, so the local buffer never holds more than the subscription's prefetch.
- ack -> ``basic.ack``; reject -> ``basic.reject(requeue=False)``, which the queue
  dead-letters to ``<topic>.<group>.dlq``; nack(delay) re-publishes the message
  (confirmed) to the delay tier at or above ``delay`` (or straight back to the
  work queue for no delay) with the next attempt number, then acks the original.
  If that re-publish fails, the message is nacked with requeue, so the broker
  redelivers it at once: it is never left without an owner.
- When the channel or connection drops, the broker takes back every unsettled
  delivery; the ones buffered and not yet handed out are dropped here, and
  settling one handed out before is a no-op (it is redelivered, attempt + 1).
  aio-pika's robust channel re-declares the topology and restores the consumer,
  also after the broker cancelled it because its queue was deleted.
- Runs across crashes (``Delivery.attempt``): the ``x-eventbus-attempt`` header counts
  the adapter's own re-publishes; quorum queues add the broker's ``x-delivery-count``.
  A classic queue only flags a redelivery (``redelivered``), so such a delivery is
  counted here (:meth:`RabbitMQSubscription._recount`): re-published to the queue
  with the attempt header + 1 (confirmed), the original acked, and the copy handed
  out when it arrives.
- The broker's count also grows for messages fetched ahead and given back unread (the
  subscription or its channel closed while they were still buffered): those are
  recorded by message id (:mod:`eventbus.given_back`) and taken off that count; a
  classic queue's flagged redelivery of such a message uses one of them up instead of
  being counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from aiormq.exceptions import ChannelPreconditionFailed

from eventbus.adapter import REPLAY_GROUP, Delivery, SubscribeOptions, Subscription, dlq_topic
from eventbus.adapters_util import map_exceptions, pick_tier
from eventbus.errors import BrokerConnectionError, TopicNotFoundError
from eventbus.given_back import given_back

from .codec import RECOUNT_HEADER, copy_message, decode, recounted, retry_headers
from .connection import CLOSE_TIMEOUT, one_line
from .delivery import RabbitMQDelivery
from .provision import (
    declare_delay_tier,
    declare_group,
    delay_queue,
    delay_queues,
    queue_depth,
    require,
    work_queue,
)

if TYPE_CHECKING:
    from .adapter import RabbitMQAdapter

log = logging.getLogger("eventbus.rabbitmq")

BACKLOG_TIMEOUT = 5.0
# (generation, message, attempt when already known)
_Item = tuple[int, AbstractIncomingMessage, int | None]


class RabbitMQSubscription(Subscription):
    """One consumer of ``<topic>/<group>`` on a channel of its own."""

    def __init__(self, adapter: RabbitMQAdapter, topic: str, options: SubscribeOptions) -> None:
        self.adapter = adapter
        self.topic = topic
        self.options = options
        self.queue_name = work_queue(topic, options.group)
        settings = adapter.settings
        # Messages given back unread, for Delivery.attempt: shared by every
        # subscription of this queue in the process (a bus started anew keeps it).
        self.unread = given_back(
            f"rabbitmq {settings.host}:{settings.port} vhost {settings.vhost!r} "
            f"queue {self.queue_name}"
        )
        self.generation = 0
        self._buffer: asyncio.Queue[_Item | None] = asyncio.Queue()
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._tiers: dict[int, str] = {}
        self._recounting: set[asyncio.Task[None]] = set()
        # Recount token -> set once its original's ack reached the broker.
        self._holds: dict[str, asyncio.Event] = {}
        self._closed = False

    async def start(self) -> None:
        """Open the channel, declare the topology, start consuming.

        The DLQ tooling's group (``eventbus-dlq-replay``) only reads: its queue is
        declared with every group, so a missing one means no such dead-letter topic,
        and :class:`TopicNotFoundError` says so without creating anything."""
        connection = await self.adapter.consuming_connection()
        settings = self.adapter.settings
        if (
            self.options.group == REPLAY_GROUP
            and await queue_depth(connection, self.queue_name, settings.connect_timeout) is None
        ):
            raise TopicNotFoundError(
                f"no such dead-letter topic {self.topic!r} on RabbitMQ at "
                f"{settings.masked_url}: its queue {self.queue_name!r} does not exist, so "
                "nothing was ever dead-lettered for that topic and group; check the topic "
                "and group names (nothing was created)"
            )
        if not settings.provision and self.options.group != REPLAY_GROUP:
            dead = dlq_topic(self.topic, self.options.group)
            await require(
                connection,
                settings,
                exchanges=[self.topic, dead],
                queues=[
                    self.queue_name,
                    work_queue(dead, REPLAY_GROUP),
                    *delay_queues(settings, self.topic, self.options.group),
                ],
            )
        channel = await connection.channel(publisher_confirms=False)
        self._channel = channel
        channel.close_callbacks.add(self._on_channel_close)
        await channel.set_qos(prefetch_count=max(1, self.options.prefetch))
        if self.options.group == REPLAY_GROUP or not settings.provision:
            self._queue = await channel.declare_queue(self.queue_name, passive=True)
        else:
            self._queue = await declare_group(channel, settings, self.topic, self.options.group)
        self._tag = await self._queue.consume(self._on_message, no_ack=False)

    def _on_channel_close(self, _: Any, exc: BaseException | None = None) -> None:
        # Everything delivered on the old channel is the broker's again.
        self.generation += 1
        self._give_back_buffered()
        if isinstance(exc, ChannelPreconditionFailed) and "timed out" in str(exc):
            log.warning(
                "RabbitMQ closed the channel of %s: a delivery stayed unacknowledged longer "
                "than the broker's consumer_timeout (%s); every unsettled message of the "
                "channel is redelivered, so a handler that slow runs twice. Raise "
                "consumer_timeout on the broker above the slowest handler",
                self.queue_name,
                one_line(self.adapter.settings, exc),
            )

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if self._closed:  # came as the consumer was cancelled: the broker takes it back
            self._give_back(message)
        else:
            self._buffer.put_nowait((self.generation, message, None))

    def _give_back(self, message: AbstractIncomingMessage) -> None:
        """``message`` goes back to the broker unread: no handler saw this delivery, yet
        a quorum queue's ``x-delivery-count`` counts it. A message with no id to know it
        by again (a foreign producer's) is not recorded."""
        if message.message_id:
            self.unread.add(message.message_id)

    def _give_back_buffered(self) -> None:
        """Drop the buffered messages (their channel closed or is closing), recording
        them as given back unread; the end-of-iteration mark stays."""
        kept: list[_Item | None] = []
        while not self._buffer.empty():
            item = self._buffer.get_nowait()
            if item is None:
                kept.append(item)
            else:
                self._give_back(item[1])
        for item in kept:
            self._buffer.put_nowait(item)

    async def park(self, message: AbstractIncomingMessage, attempt: int, delay: float) -> None:
        """Re-publish ``message`` to come back after ``delay`` seconds as ``attempt``."""
        delay_ms = int(delay * 1000)
        if delay_ms <= 0:
            queue = self.queue_name
        else:
            tier = pick_tier(delay, self.adapter.settings.delay_tiers)
            queue = await self._tier(round(tier * 1000))
        headers = retry_headers(
            message.headers, attempt=attempt, not_before_ms=int(time.time() * 1000) + delay_ms
        )
        await self.adapter.publish_to_queue(queue, copy_message(message, headers))

    async def _tier(self, tier_ms: int) -> str:
        name = self._tiers.get(tier_ms)
        if name is None:
            assert self._channel is not None
            if self.adapter.settings.provision:
                name = await declare_delay_tier(
                    self._channel, self.topic, self.options.group, tier_ms
                )
            else:  # checked to exist when the subscription started
                name = delay_queue(self.topic, self.options.group, tier_ms)
            self._tiers[tier_ms] = name
        return name

    async def backlog(self) -> int | None:
        """Ready messages in the group's queue (a passive declare on a channel of its
        own): not those delivered and unacknowledged, nor those waiting in a delay tier.

        ``None`` with ``single_active_consumer``: a standby consumer receives nothing
        while the active one works through the queue, which is not a stall."""
        if self.adapter.settings.single_active_consumer:
            return None
        settings = self.adapter.settings
        with map_exceptions(
            {Exception: BrokerConnectionError},
            scrub=settings.scrub,
            chain=False,
            what=(
                f"counting the messages of queue {self.queue_name!r} on RabbitMQ at "
                f"{settings.masked_url} (within {BACKLOG_TIMEOUT:g}s)"
            ),
        ):
            connection = await self.adapter.consuming_connection()
            depth = await queue_depth(connection, self.queue_name, BACKLOG_TIMEOUT)
        if depth is None:
            raise TopicNotFoundError(
                f"the queue {self.queue_name!r} of group {self.options.group!r} on "
                f"{self.topic!r} was deleted on RabbitMQ; subscribing again declares it"
            )
        return depth

    async def close(self) -> None:
        """Cancel the consumer and close the channel: unsettled messages go back."""
        if self._closed:
            return
        self._closed = True
        self._buffer.put_nowait(None)
        for task in list(self._recounting):
            task.cancel()
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                if self._queue is not None and self._tag is not None and not channel.is_closed:
                    await asyncio.wait_for(self._queue.cancel(self._tag), CLOSE_TIMEOUT)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT)
        self._give_back_buffered()  # if the channel's close callback did not run
        self.adapter.forget(self)

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while not self._closed:
            item = await self._buffer.get()
            if item is None or self._closed:
                if item is not None:  # taken as the subscription closed: not handed out
                    self._give_back(item[1])
                return
            generation, message, attempt = item
            if generation != self.generation:
                continue  # its channel closed: the broker redelivers it
            delivery = await self._delivery(generation, message, attempt)
            if delivery is not None:
                yield delivery

    async def _delivery(
        self, generation: int, message: AbstractIncomingMessage, known: int | None
    ) -> RabbitMQDelivery | None:
        decoded = decode(message.headers, message.content_type, message.body)
        wait_ms = decoded.not_before_ms - int(time.time() * 1000)
        if wait_ms > 50:
            # Delayed past the largest tier: park it again for the rest.
            try:
                await self.park(message, decoded.attempt, wait_ms / 1000)
                await message.ack()
            except Exception as exc:
                log.warning(
                    "re-parking %s failed (%s); handing it out early",
                    message.delivery_tag,
                    one_line(self.adapter.settings, exc),
                )
            else:
                return None
        headers = message.headers or {}
        hold = self._holds.get(str(headers.get(RECOUNT_HEADER, "")))
        if hold is not None:
            # The copy of a redelivery this subscription counted: not before the
            # original's ack reached the broker, or a crash in this copy's run would
            # bring the original back as well, with the old count.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hold.wait(), CLOSE_TIMEOUT)
        redeliveries = headers.get("x-delivery-count")
        if known is not None:
            attempt = known
        elif isinstance(redeliveries, int):  # quorum queues count broker redeliveries
            given_back_unread = self.unread.of(message.message_id) if message.message_id else 0
            attempt = decoded.attempt + max(0, redeliveries - given_back_unread)
        elif message.redelivered and message.message_id and self.unread.take(message.message_id):
            # Delivered before, to a subscription of this process that gave it back
            # unread: no run to count.
            attempt = decoded.attempt
        elif message.redelivered:
            # A classic queue says only "delivered before": count it on the message.
            task = asyncio.create_task(self._recount(generation, message, decoded.attempt + 1))
            self._recounting.add(task)
            task.add_done_callback(self._recounting.discard)
            return None
        else:
            attempt = decoded.attempt
        return RabbitMQDelivery(self, message, generation, decoded, attempt)

    async def _recount(
        self, generation: int, message: AbstractIncomingMessage, attempt: int
    ) -> None:
        """Put a classic queue's redelivery back on the queue carrying ``attempt``, then
        ack the original: the copy arrives as a fresh delivery whose attempt header
        counts every run so far, across process crashes.

        In a task of its own, so a publish held up (a memory alarm blocks publishing)
        never holds up the deliveries behind it. When the copy cannot be published the
        original is handed out with ``attempt`` (a lower bound: the crashes before it
        went uncounted) rather than not at all."""
        token = uuid.uuid4().hex
        hold = self._holds[token] = asyncio.Event()
        try:
            try:
                await self.adapter.publish_to_queue(
                    self.queue_name,
                    copy_message(message, recounted(message.headers, attempt, token)),
                )
            except Exception as exc:
                log.warning(
                    "counting the redelivery of %s (attempt %d) on the queue failed "
                    "(%s); handing it out as attempt %d",
                    self.queue_name,
                    attempt,
                    one_line(self.adapter.settings, exc),
                    attempt,
                )
                self._buffer.put_nowait((generation, message, attempt))
                return
            try:
                await message.ack()
                # A round trip on the same channel: the broker handles a channel's
                # frames in order, so once this is answered the ack has been taken.
                await asyncio.wait_for(
                    message.channel.basic_qos(prefetch_count=max(1, self.options.prefetch)),
                    CLOSE_TIMEOUT,
                )
            except Exception as exc:
                # The channel went: the original comes back as well, and is counted
                # again; the copy is a duplicate, which idempotency absorbs.
                log.info(
                    "acking %s after counting its redelivery failed (%s)",
                    self.queue_name,
                    one_line(self.adapter.settings, exc),
                )
        finally:
            hold.set()
            # Kept a while for a copy that arrives late; then forgotten.
            asyncio.get_running_loop().call_later(60, self._holds.pop, token, None)
