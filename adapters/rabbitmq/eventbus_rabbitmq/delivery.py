"""A consumed AMQP message as a :class:`~eventbus.adapter.Delivery`: ack, reject, or
re-park for a later attempt (the subscription and its channel are in consumer.py)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aio_pika.abc import AbstractIncomingMessage

from eventbus.adapter import Decoded, Delivery

from .codec import PROPERTIES
from .connection import one_line

if TYPE_CHECKING:
    from .consumer import RabbitMQSubscription

log = logging.getLogger("eventbus.rabbitmq")


class RabbitMQDelivery(Delivery):
    """A consumed message; settling it acks, rejects or re-parks it."""

    __slots__ = ("_generation", "_message", "_owner")

    def __init__(
        self,
        owner: RabbitMQSubscription,
        message: AbstractIncomingMessage,
        generation: int,
        decoded: Decoded,
        attempt: int,
    ) -> None:
        super().__init__(
            decoded,
            topic=owner.topic,
            group=owner.options.group,
            attempt=attempt,
            # The producer's id where it set one (ours: the event id), else the
            # delivery's place on this channel.
            message_id=message.message_id or f"{owner.queue_name}/{message.delivery_tag}",
        )
        self._owner = owner
        self._message = message
        self._generation = generation
        if self.envelope is None:  # not a CloudEvent: its properties beside its headers
            kept = dict(self.raw_headers or {})
            for name in PROPERTIES:
                value = getattr(message, name, None)
                if value and name not in kept:
                    kept[name] = str(value).encode()
            self.raw_headers = kept

    @property
    def stale(self) -> bool:
        """True once the channel this came on has closed: the broker owns it again
        (and redelivers it), so the bus drops it unrun."""
        return self._generation != self._owner.generation

    def _stale(self, what: str) -> bool:
        if not self.stale:
            return False
        # The channel this came on is gone: the broker has already requeued it.
        log.info(
            "%s of %s skipped: its channel closed, the broker redelivers it", what, self.message_id
        )
        return True

    def _done(self) -> None:
        """This broker message is gone from the queue (acked, rejected, or replaced by a
        parked copy whose x-delivery-count starts at 0): what was given back of it
        unread must not be taken off a later copy's count."""
        if self._message.message_id:
            self._owner.unread.forget(self._message.message_id)

    async def _ack(self) -> None:
        if not self._stale("ack"):
            await self._message.ack()
            self._done()

    async def _reject(self) -> None:
        if not self._stale("reject"):
            await self._message.reject(requeue=False)
            self._done()

    async def _nack(self, delay: float) -> None:
        if self._stale("nack"):
            return
        try:
            await self._owner.park(self._message, self.attempt + 1, delay)
        except Exception as exc:
            log.warning(
                "re-publishing %s for redelivery in %.3fs failed (%s); nacking it with "
                "requeue so the broker redelivers it now",
                self.message_id,
                delay,
                one_line(self._owner.adapter.settings, exc),
            )
            await self._message.nack(requeue=True)
            return
        await self._message.ack()
        self._done()
