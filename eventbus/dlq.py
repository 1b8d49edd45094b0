"""List and replay dead letters.

Dead letters of ``topic`` for ``group`` live on ``<topic>.<group>.dlq``. Replay
publishes each original envelope (same id, data and correlation, the dead-letter
attributes removed) back to its original topic and acknowledges the dead letter,
so it is replayed once. The original topic fans out to every group: groups that
already handled the event see it again, which idempotency turns into a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

from eventbus.adapter import Adapter, Delivery, SubscribeOptions, Subscription
from eventbus.deadletter import UNDECODABLE_TYPE, DeadLetterRecord, dlq_topic

REPLAY_GROUP = "eventbus-dlq-replay"


class DeadLetters:
    """Browse and replay the dead letters of one (topic, group)::

        async with bus:
            for record in await DeadLetters(bus.adapter).list("orders", "billing"):
                print(record.envelope.id, record.reason)
            await DeadLetters(bus.adapter).replay("orders", "billing")
    """

    def __init__(self, adapter: Adapter, *, idle: float = 1.0) -> None:
        self.adapter = adapter
        self.idle = idle

    async def _collect(
        self, topic: str, group: str, reader: str, limit: int | None
    ) -> tuple[Subscription, list[Delivery]]:
        options = SubscribeOptions(group=reader, prefetch=max(1, min(limit or 256, 256)),
                                   start_from="earliest")
        subscription = await self.adapter.subscribe(dlq_topic(topic, group), options)
        deliveries: list[Delivery] = []
        iterator = aiter(subscription)
        while limit is None or len(deliveries) < limit:
            try:
                delivery = await asyncio.wait_for(anext(iterator), self.idle)
            except (TimeoutError, StopAsyncIteration):
                break
            deliveries.append(delivery)
        return subscription, deliveries

    async def list(
        self, topic: str, group: str, *, limit: int | None = 100
    ) -> list[DeadLetterRecord]:
        """Dead letters of ``topic``/``group``, oldest first, without consuming them."""
        durable = not self.adapter.capabilities.replay
        # A throwaway reader group sees the whole history where the broker keeps it;
        # elsewhere we read the one DLQ queue and hand every message back.
        reader = REPLAY_GROUP if durable else f"eventbus-dlq-browse-{uuid.uuid4().hex[:8]}"
        subscription, deliveries = await self._collect(topic, group, reader, limit)
        records = [DeadLetterRecord.from_envelope(d.envelope) for d in deliveries if d.envelope]
        for delivery in deliveries:
            with contextlib.suppress(Exception):
                await (delivery.nack(0) if durable else delivery.ack())
        await subscription.close()
        return records

    async def replay(
        self, topic: str, group: str, *, limit: int | None = None, to_topic: str | None = None
    ) -> int:
        """Publish dead letters back to their topic (or ``to_topic``); returns how many."""
        subscription, deliveries = await self._collect(topic, group, REPLAY_GROUP, limit)
        replayed = 0
        try:
            for delivery in deliveries:
                envelope = delivery.envelope
                if envelope is None or envelope.type == UNDECODABLE_TYPE:
                    # Bytes that never were an event cannot be replayed as one; keep them.
                    await delivery.nack(0)
                    continue
                record = DeadLetterRecord.from_envelope(envelope)
                await self.adapter.publish(to_topic or record.topic or topic, [record.original])
                await delivery.ack()
                replayed += 1
        finally:
            for delivery in deliveries:
                if delivery.settled is None:
                    with contextlib.suppress(Exception):
                        await delivery.nack(0)
            await subscription.close()
        return replayed
