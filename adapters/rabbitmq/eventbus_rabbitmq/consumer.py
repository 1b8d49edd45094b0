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
  aio-pika's robust channel re-declares the topology and restores the consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aio_pika import DeliveryMode, Message
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from eventbus.adapter import Delivery, SubscribeOptions, Subscription

from .codec import decode, retry_headers
from .provision import declare_delay_tier, declare_group, pick_tier, work_queue

if TYPE_CHECKING:
    from .adapter import RabbitMQAdapter

log = logging.getLogger("eventbus.rabbitmq")

CLOSE_TIMEOUT = 5.0


class RabbitMQDelivery(Delivery):
    """A consumed message; settling it acks, rejects or re-parks it."""

    __slots__ = ("_generation", "_message", "_owner")

    def __init__(self, owner: RabbitMQSubscription, message: AbstractIncomingMessage,
                 generation: int, envelope: Any, attempt: int, error: str | None) -> None:
        super().__init__(
            topic=owner.topic,
            group=owner.options.group,
            envelope=envelope,
            attempt=attempt,
            message_id=f"{owner.queue_name}/{message.delivery_tag}",
            raw=None if envelope is not None else message.body,
            decode_error=error,
        )
        self._owner = owner
        self._message = message
        self._generation = generation

    @property
    def stale(self) -> bool:
        """True once the channel this came on has closed: the broker owns it again
        (and redelivers it), so the bus drops it unrun."""
        return self._generation != self._owner.generation

    def _stale(self, what: str) -> bool:
        if not self.stale:
            return False
        # The channel this came on is gone: the broker has already requeued it.
        log.info("%s of %s skipped: its channel closed, the broker redelivers it",
                 what, self.message_id)
        return True

    async def _ack(self) -> None:
        if not self._stale("ack"):
            await self._message.ack()

    async def _reject(self) -> None:
        if not self._stale("reject"):
            await self._message.reject(requeue=False)

    async def _nack(self, delay: float) -> None:
        if self._stale("nack"):
            return
        try:
            await self._owner.park(self._message, self.attempt + 1, delay)
        except Exception as exc:
            log.warning(
                "re-publishing %s for redelivery in %.3fs failed (%s: %s); nacking it "
                "with requeue so the broker redelivers it now", self.message_id, delay,
                type(exc).__name__, exc,
            )
            await self._message.nack(requeue=True)
            return
        await self._message.ack()


class RabbitMQSubscription(Subscription):
    """One consumer of ``<topic>/<group>`` on a channel of its own."""

    def __init__(self, adapter: RabbitMQAdapter, topic: str, options: SubscribeOptions) -> None:
        self.adapter = adapter
        self.topic = topic
        self.options = options
        self.queue_name = work_queue(topic, options.group)
        self.generation = 0
        self._buffer: asyncio.Queue[tuple[int, AbstractIncomingMessage] | None] = (
            asyncio.Queue())
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._tag: str | None = None
        self._tiers: dict[int, str] = {}
        self._closed = False

    async def start(self) -> None:
        """Open the channel, declare the topology, start consuming."""
        connection = await self.adapter.ready_connection()
        channel = await connection.channel(publisher_confirms=False)
        self._channel = channel
        channel.close_callbacks.add(self._on_channel_close)
        await channel.set_qos(prefetch_count=max(1, self.options.prefetch))
        self._queue = await declare_group(channel, self.adapter.settings, self.topic,
                                          self.options.group)
        self._tag = await self._queue.consume(self._on_message, no_ack=False)

    def _on_channel_close(self, *_: Any) -> None:
        # Everything delivered on the old channel is the broker's again.
        self.generation += 1
        kept: list[tuple[int, AbstractIncomingMessage] | None] = []
        while not self._buffer.empty():
            item = self._buffer.get_nowait()
            if item is None:
                kept.append(item)
        for item in kept:
            self._buffer.put_nowait(item)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._buffer.put_nowait((self.generation, message))

    async def park(self, message: AbstractIncomingMessage, attempt: int, delay: float) -> None:
        """Re-publish ``message`` to come back after ``delay`` seconds as ``attempt``."""
        delay_ms = int(delay * 1000)
        if delay_ms <= 0:
            queue = self.queue_name
        else:
            queue = await self._tier(pick_tier(self.adapter.settings.delay_tiers_ms, delay_ms))
        headers = retry_headers(message.headers, attempt=attempt,
                                not_before_ms=int(time.time() * 1000) + delay_ms)
        copy = Message(message.body, headers=headers, content_type=message.content_type,
                       delivery_mode=DeliveryMode.PERSISTENT, message_id=message.message_id,
                       type=message.type)
        self.adapter.check_raw_size(self.topic, copy)
        await self.adapter.publish_to_queue(queue, copy)

    async def _tier(self, tier_ms: int) -> str:
        name = self._tiers.get(tier_ms)
        if name is None:
            assert self._channel is not None
            name = await declare_delay_tier(self._channel, self.topic, self.options.group,
                                            tier_ms)
            self._tiers[tier_ms] = name
        return name

    async def close(self) -> None:
        """Cancel the consumer and close the channel: unsettled messages go back."""
        if self._closed:
            return
        self._closed = True
        self._buffer.put_nowait(None)
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                if self._queue is not None and self._tag is not None and not channel.is_closed:
                    await asyncio.wait_for(self._queue.cancel(self._tag), CLOSE_TIMEOUT)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(channel.close(), CLOSE_TIMEOUT)
        self.adapter.forget(self)

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while not self._closed:
            item = await self._buffer.get()
            if item is None or self._closed:
                return
            generation, message = item
            if generation != self.generation:
                continue  # its channel closed: the broker redelivers it
            delivery = await self._delivery(generation, message)
            if delivery is not None:
                yield delivery

    async def _delivery(self, generation: int,
                        message: AbstractIncomingMessage) -> RabbitMQDelivery | None:
        decoded = decode(message.headers, message.content_type, message.body)
        wait_ms = decoded.not_before_ms - int(time.time() * 1000)
        if wait_ms > 50:
            # Delayed past the largest tier: park it again for the rest.
            try:
                await self.park(message, decoded.attempt, wait_ms / 1000)
                await message.ack()
            except Exception as exc:
                log.warning("re-parking %s failed (%s); handing it out early",
                            message.delivery_tag, exc)
            else:
                return None
        headers = message.headers or {}
        redeliveries = headers.get("x-delivery-count")  # quorum queues count them
        if isinstance(redeliveries, int):
            attempt = decoded.attempt + redeliveries
        else:
            attempt = decoded.attempt + (1 if message.redelivered else 0)
        return RabbitMQDelivery(self, message, generation, decoded.envelope, attempt,
                                decoded.error)
