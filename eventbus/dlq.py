"""List and replay dead letters.

Dead letters of ``topic`` for ``group`` live on ``<topic>.<group>.dlq``. Listing
browses that topic with :meth:`Adapter.read`, which leaves nothing behind on the
broker (no consumer group, no commit, no topic). Replay publishes each original
envelope (same id, data and correlation, the dead-letter attributes removed) back
to its original topic and then records that on ``<topic>.<group>.dlq.replayed``
(a small marker naming the letter), so a letter is replayed once and ``list``
can say which letters were replayed. The original topic fans out to every group:
groups that already handled the event see it again, which idempotency turns into
a no-op.

Brokers that cannot browse without consuming (plain queues) fall back to reading
the DLQ queue as the ``eventbus-dlq-replay`` group: ``list`` hands every message
back, ``replay`` acknowledges what it republished, so the queue itself holds only
letters not yet replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, fields
from typing import Any

from eventbus.adapter import Adapter, Delivery, ReadRecord, SubscribeOptions, Subscription
from eventbus.deadletter import DeadLetterRecord, dlq_topic
from eventbus.envelope import Envelope
from eventbus.errors import TopicNotFoundError, UnsupportedOperationError

REPLAY_GROUP = "eventbus-dlq-replay"
REPLAYED_TYPE = "eventbus.dlq.replayed"
"""Type of the marker ``replay`` publishes for each letter it republished."""


def replayed_topic(topic: str, group: str) -> str:
    """Where ``replay`` records which dead letters of ``topic``/``group`` it republished."""
    return f"{dlq_topic(topic, group)}.replayed"


@dataclass(frozen=True, slots=True)
class ListedDeadLetter(DeadLetterRecord):
    """A dead letter as :meth:`DeadLetters.list` shows it.

    ``message_id`` is the letter's position on the DLQ topic; ``replayed`` says
    whether :meth:`DeadLetters.replay` already republished it (dead letters stay on
    a log broker's DLQ topic after a replay; this tells them apart).
    """

    message_id: str = ""
    replayed: bool = False


# Inside DeadLetters the method ``list`` shadows the builtin in annotations.
_Letters = list[ListedDeadLetter]
_Deliveries = list[Delivery]


class DeadLetters:
    """Browse and replay the dead letters of one (topic, group)::

        async with bus:
            for record in await DeadLetters(bus.adapter).list("orders", "billing"):
                print(record.envelope.id, record.reason, record.replayed)
            await DeadLetters(bus.adapter).replay("orders", "billing")

    ``idle`` is how long the queue fallback waits for one more message; browsing
    a log broker needs no wait, it stops at the end of the topic.
    """

    def __init__(self, adapter: Adapter, *, idle: float = 1.0) -> None:
        self.adapter = adapter
        self.idle = idle

    async def list(
        self, topic: str, group: str, *, limit: int | None = 100, include_replayed: bool = True
    ) -> _Letters:
        """Dead letters of ``topic``/``group``, oldest first, without consuming them.

        ``include_replayed=False`` leaves out letters already replayed. Raises
        :class:`~eventbus.errors.TopicNotFoundError` when there is no such
        dead-letter topic (a typo in the topic or group, or nothing ever failed).
        """
        try:
            letters = await self._browse(topic, group, limit if include_replayed else None)
        except UnsupportedOperationError:
            return await self._list_by_consuming(topic, group, limit)
        if not include_replayed:
            letters = [letter for letter in letters if not letter.replayed]
        return letters if limit is None else letters[:limit]

    async def replay(
        self, topic: str, group: str, *, limit: int | None = None, to_topic: str | None = None
    ) -> int:
        """Publish dead letters back to their topic (or ``to_topic``); returns how many.

        Letters already replayed and undecodable ones (bytes that never were an
        event) are skipped. Raises :class:`~eventbus.errors.TopicNotFoundError`
        when there is no such dead-letter topic.
        """
        try:
            letters = await self._browse(topic, group, None)
        except UnsupportedOperationError:
            return await self._replay_by_consuming(topic, group, limit, to_topic)
        replayed = 0
        for letter in letters:
            if limit is not None and replayed >= limit:
                break
            if letter.replayed or not letter.replayable:
                continue  # raw bytes or a reference whose data did not fit: not an event
            destination = to_topic or letter.topic or topic
            await self.adapter.publish(destination, [letter.original])
            # After the republish: a crash in between replays the letter again, which
            # idempotency absorbs; the other order could lose it.
            await self.adapter.publish(
                replayed_topic(topic, group), [_marker(letter, destination)]
            )
            replayed += 1
        return replayed

    # -- browsing (brokers that can read without consuming) -----------------------------

    async def _browse(self, topic: str, group: str, limit: int | None) -> _Letters:
        name = dlq_topic(topic, group)
        try:
            records = await self.adapter.read(name, limit=limit)
        except TopicNotFoundError as exc:
            raise TopicNotFoundError(
                f"no such dead-letter topic {name!r}: nothing was ever dead-lettered for "
                f"topic {topic!r} group {group!r} on this broker; check the topic and group "
                "names (nothing was created)"
            ) from exc
        done = await self._replayed(topic, group)
        return [
            _listed(record, record.envelope, (record.message_id, record.envelope.id) in done)
            for record in records
            if record.envelope is not None  # the dead-letter step wraps undecodable bytes
        ]

    async def _replayed(self, topic: str, group: str) -> set[tuple[str, str]]:
        """(position, event id) of every letter a replay republished."""
        try:
            markers = await self.adapter.read(replayed_topic(topic, group))
        except TopicNotFoundError:
            return set()
        done: set[tuple[str, str]] = set()
        for marker in markers:
            if marker.envelope is None or marker.envelope.type != REPLAYED_TYPE:
                continue
            try:
                doc = json.loads(marker.envelope.data)
                done.add((str(doc["position"]), str(doc["id"])))
            except (ValueError, KeyError, TypeError):
                continue  # not ours; a marker we cannot read marks nothing
        return done

    # -- queue fallback (brokers that cannot browse) ------------------------------------

    async def _collect(
        self, topic: str, group: str, limit: int | None
    ) -> tuple[Subscription, _Deliveries]:
        # Always the one replay group: a new group per call would be left behind on
        # the broker, each queueing every later dead letter forever.
        options = SubscribeOptions(group=REPLAY_GROUP, prefetch=max(1, min(limit or 256, 256)),
                                   start_from="earliest")
        subscription = await self.adapter.subscribe(dlq_topic(topic, group), options)
        deliveries: _Deliveries = []
        iterator = aiter(subscription)
        while limit is None or len(deliveries) < limit:
            try:
                delivery = await asyncio.wait_for(anext(iterator), self.idle)
            except (TimeoutError, StopAsyncIteration):
                break
            deliveries.append(delivery)
        return subscription, deliveries

    async def _list_by_consuming(
        self, topic: str, group: str, limit: int | None
    ) -> _Letters:
        subscription, deliveries = await self._collect(topic, group, limit)
        try:
            return [
                _listed(ReadRecord(d.topic, d.message_id, d.envelope), d.envelope, False)
                for d in deliveries
                if d.envelope is not None
            ]
        finally:
            for delivery in deliveries:
                with contextlib.suppress(Exception):
                    await delivery.nack(0)
            await subscription.close()

    async def _replay_by_consuming(
        self, topic: str, group: str, limit: int | None, to_topic: str | None
    ) -> int:
        subscription, deliveries = await self._collect(topic, group, limit)
        replayed = 0
        try:
            for delivery in deliveries:
                envelope = delivery.envelope
                record = None if envelope is None else DeadLetterRecord.from_envelope(envelope)
                if record is None or not record.replayable:
                    # Bytes that never were an event, or a reference whose data did not
                    # fit the DLQ, cannot be replayed as the event; keep them.
                    await delivery.nack(0)
                    continue
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


def _listed(record: ReadRecord, envelope: Envelope, replayed: bool) -> ListedDeadLetter:
    base = DeadLetterRecord.from_envelope(envelope)
    values: dict[str, Any] = {f.name: getattr(base, f.name) for f in fields(DeadLetterRecord)}
    return ListedDeadLetter(**values, message_id=record.message_id, replayed=replayed)


def _marker(letter: ListedDeadLetter, destination: str) -> Envelope:
    """The record that ``letter`` (its position and id) was republished to ``destination``."""
    data = {"position": letter.message_id, "id": letter.envelope.id, "to": destination}
    return Envelope.create(
        type=REPLAYED_TYPE,
        source="eventbus.dlq",
        subject=letter.envelope.id,
        correlationid=letter.envelope.correlationid,
        data=json.dumps(data, separators=(",", ":")).encode(),
    )
