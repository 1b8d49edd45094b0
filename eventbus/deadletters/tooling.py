"""List, show, replay and purge dead letters.

(Over 400 lines on purpose: list, replay and purge, which share the marker protocol they
must agree on.)

Dead letters of ``topic`` for ``group`` live on ``<topic>.<group>.dlq``. Listing
browses that topic with :meth:`Adapter.read`, which leaves nothing behind on the
broker (no consumer group, no commit, no topic). Replay publishes each original
envelope (same id, data and correlation, the dead-letter attributes removed) back
to its original topic and then records that on ``<topic>.<group>.dlq.replayed``
(a small marker naming the letter), so a letter is replayed once and ``list``
can say which letters were replayed. The original topic fans out to every group:
groups that already handled the event see it again, which idempotency turns into
a no-op.

A log broker (Kafka, memory) cannot delete one message from a topic, so
``purge`` records a "purged" marker for each letter on the same marker topic;
``list`` hides purged letters and ``replay`` skips them. The letters themselves
stay on the DLQ topic until its retention removes them.

Brokers that cannot browse without consuming (plain queues) fall back to reading
the DLQ queue as the ``eventbus-dlq-replay`` group: ``list`` hands every message
back, ``replay`` and ``purge`` acknowledge what they republished or dropped, so
the queue itself holds only letters not yet replayed or purged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from typing import Any, Literal

from eventbus.adapter import Adapter, Delivery, ReadRecord, SubscribeOptions, Subscription
from eventbus.adapter_names import REPLAY_GROUP, dlq_topic, replaying
from eventbus.deadletters.letters import DeadLetterRecord
from eventbus.envelope import Envelope
from eventbus.errors import TopicNotFoundError, UnsupportedOperationError
from eventbus.raw_message import RawMessage

REPLAYED_TYPE = "eventbus.dlq.replayed"
"""Type of the marker ``replay`` publishes for each letter it republished."""
PURGED_TYPE = "eventbus.dlq.purged"
"""Type of the marker ``purge`` publishes for each letter it purged (log brokers)."""

State = Literal["pending", "replayed", "purged"]
Progress = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each letter a replay or purge handled."""


def replayed_topic(topic: str, group: str) -> str:
    """Where ``replay`` and ``purge`` record which dead letters of ``topic``/``group``
    they republished or purged."""
    return f"{dlq_topic(topic, group)}.replayed"


@dataclass(frozen=True, slots=True)
class ListedDeadLetter(DeadLetterRecord):
    """A dead letter as :meth:`DeadLetters.list` shows it.

    ``message_id`` is the letter's position on the DLQ topic; ``replayed`` says
    whether :meth:`DeadLetters.replay` already republished it and ``purged``
    whether :meth:`DeadLetters.purge` marked it purged (dead letters stay on a
    log broker's DLQ topic after either; this tells them apart).
    """

    message_id: str = ""
    replayed: bool = False
    purged: bool = False

    @property
    def state(self) -> State:
        """``"purged"``, ``"replayed"`` or ``"pending"`` (neither yet)."""
        return "purged" if self.purged else "replayed" if self.replayed else "pending"

    def matches(self, letter_id: str) -> bool:
        """Whether ``letter_id`` names this letter: its event id or its DLQ position."""
        return letter_id in (self.envelope.id, self.message_id)


# Inside DeadLetters the method ``list`` shadows the builtin in annotations.
_Letters = list[ListedDeadLetter]
_Deliveries = list[Delivery]
_Marks = dict[tuple[str, str], set[str]]


class DeadLetters:
    """Browse, replay and purge the dead letters of one (topic, group)::

        async with bus:
            dead = DeadLetters(bus.adapter)
            for record in await dead.list("orders", "billing"):
                print(record.envelope.id, record.reason, record.state)
            await dead.replay("orders", "billing")            # every pending letter
            await dead.replay("orders", "billing", ids=[id])  # just one
            await dead.purge("orders", "billing", ids=[id])   # give up on one

    ``idle`` is how long the queue fallback waits for one more message; browsing
    a log broker needs no wait, it stops at the end of the topic. A letter is named
    by its event id or by its position on the DLQ topic (``message_id``).
    """

    def __init__(self, adapter: Adapter, *, idle: float = 1.0) -> None:
        self.adapter = adapter
        self.idle = idle

    async def list(
        self,
        topic: str,
        group: str,
        *,
        limit: int | None = 100,
        include_replayed: bool = True,
        include_purged: bool = False,
    ) -> _Letters:
        """Dead letters of ``topic``/``group``, oldest first, without consuming them.

        ``include_replayed=False`` leaves out letters already replayed; purged
        letters are left out unless ``include_purged``. Raises
        :class:`~eventbus.errors.TopicNotFoundError` when there is no such
        dead-letter topic (a typo in the topic or group, or nothing ever failed).
        """
        everything = include_replayed and include_purged
        if not self.adapter.capabilities.browse:
            return await self._list_by_consuming(topic, group, limit)
        letters = await self._browse(topic, group, limit if everything else None)
        letters = [
            letter
            for letter in letters
            if (include_replayed or not letter.replayed) and (include_purged or not letter.purged)
        ]
        return letters if limit is None else letters[:limit]

    async def show(self, topic: str, group: str, letter_id: str) -> _Letters:
        """Every letter of ``topic``/``group`` named ``letter_id`` (event id or position),
        replayed and purged ones included; several when the same event failed again
        after a replay. Raises :class:`~eventbus.errors.TopicNotFoundError` for no such
        dead-letter topic."""
        letters = await self.list(topic, group, limit=None, include_purged=True)
        return [letter for letter in letters if letter.matches(letter_id)]

    async def replay(
        self,
        topic: str,
        group: str,
        *,
        limit: int | None = None,
        to_topic: str | None = None,
        ids: Collection[str] | None = None,
        progress: Progress | None = None,
        to_group: bool | None = None,
    ) -> int:
        """Publish dead letters back to their topic (or ``to_topic``); returns how many.

        ``ids`` restricts the replay to the letters with those event ids or
        positions. Letters already replayed or purged, and references whose data was
        dropped to fit the DLQ, are skipped; undecodable ones (bytes that never were an
        event) go back as they arrived, with their headers, to the whole topic
        (:meth:`Adapter.publish_raw`), for a consumer that can read them now. Raises
        :class:`~eventbus.errors.TopicNotFoundError` when there is no such
        dead-letter topic.

        ``to_group``: ``None`` (default) replays to the failed group alone where the
        broker can route to one group (:meth:`Adapter.publish_to_group`: memory,
        Kafka through that group's retry topic), else to the whole topic, whose
        other groups then see the event again (idempotency makes that a no-op);
        ``True`` insists on the group (raising UnsupportedOperationError where the
        broker can't), ``False`` always uses the whole topic. ``to_topic`` implies
        the whole of that topic.
        """
        if not self.adapter.capabilities.browse:
            return await self._settle_by_consuming(
                topic,
                group,
                limit,
                ids,
                progress,
                to_topic=to_topic,
                purge=False,
                to_group=to_group,
            )
        letters = await self._browse(topic, group, None)
        todo = [
            letter
            for letter in letters
            if letter.state == "pending"
            and letter.replayable  # raw bytes/references: not events
            and (ids is None or any(letter.matches(i) for i in ids))
        ][:limit]
        group_route = self._group_route(to_group, to_topic)
        for done, letter in enumerate(todo, 1):
            destination = to_topic or letter.topic or topic
            target_group = letter.group or group
            if letter.undecodable:
                # Bytes that never were an event go back as they arrived, headers and
                # all, to the whole topic (a group route carries events only).
                raw = RawMessage(letter.raw or b"", letter.raw_headers)
                await self.adapter.publish_raw(destination, raw)
            elif group_route:
                with replaying(letter.message_id or letter.failed_at):
                    await self.adapter.publish_to_group(
                        destination, target_group, [letter.original]
                    )
                destination = f"{destination} (group {target_group})"
            if not group_route and not letter.undecodable:
                with replaying(letter.message_id or letter.failed_at):
                    await self.adapter.publish(destination, [letter.original])
            # After the republish: a crash in between replays the letter again, which
            # idempotency absorbs; the other order could lose it.
            await self.adapter.publish(
                replayed_topic(topic, group), [_marker(REPLAYED_TYPE, letter, destination)]
            )
            if progress is not None:
                progress(done, len(todo))
        return len(todo)

    async def purge(
        self,
        topic: str,
        group: str,
        *,
        limit: int | None = None,
        ids: Collection[str] | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Give up on dead letters (all, or those named by ``ids``); returns how many.

        On a log broker the letters stay on the DLQ topic, marked purged: ``list``
        hides them and ``replay`` skips them. On a queue broker they are consumed.
        Raises :class:`~eventbus.errors.TopicNotFoundError` for no such dead-letter
        topic.
        """
        if not self.adapter.capabilities.browse:
            return await self._settle_by_consuming(
                topic, group, limit, ids, progress, to_topic=None, purge=True
            )
        letters = await self._browse(topic, group, None)
        todo = [
            letter
            for letter in letters
            if not letter.purged and (ids is None or any(letter.matches(i) for i in ids))
        ][:limit]
        # Markers go out in batches: one publish per letter is slow on a remote broker,
        # one publish of thousands may exceed its batch limit.
        for start in range(0, len(todo), _MARKER_BATCH):
            batch = todo[start : start + _MARKER_BATCH]
            await self.adapter.publish(
                replayed_topic(topic, group), [_marker(PURGED_TYPE, letter) for letter in batch]
            )
            if progress is not None:
                progress(start + len(batch), len(todo))
        return len(todo)

    def _group_route(self, to_group: bool | None, to_topic: str | None) -> bool:
        """Whether replays go to the failed group alone (see :meth:`replay`)."""
        if to_group is False or to_topic is not None:
            return False
        if self.adapter.capabilities.group_route:
            return True
        if to_group:
            raise UnsupportedOperationError(
                f"{type(self.adapter).__name__} cannot deliver to one group of a topic "
                "(capabilities.group_route is false): replay to the whole topic instead "
                "(to_group=None or False; eventbus dlq replay --whole-topic)"
            )
        return False

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
        marks = await self._marks(topic, group)
        return [
            _listed(record, record.envelope, marks.get((record.message_id, record.envelope.id)))
            for record in records
            if record.envelope is not None  # the dead-letter step wraps undecodable bytes
        ]

    async def _marks(self, topic: str, group: str) -> _Marks:
        """(position, event id) of every letter replayed or purged, with its marker types."""
        try:
            markers = await self.adapter.read(replayed_topic(topic, group))
        except TopicNotFoundError:
            return {}
        marks: _Marks = {}
        for marker in markers:
            if marker.envelope is None or marker.envelope.type not in _MARKER_TYPES:
                continue
            try:
                doc = json.loads(marker.envelope.data)
                key = (str(doc["position"]), str(doc["id"]))
            except (ValueError, KeyError, TypeError):
                continue  # not ours; a marker we cannot read marks nothing
            marks.setdefault(key, set()).add(marker.envelope.type)
        return marks

    # -- queue fallback (brokers that cannot browse) ------------------------------------

    async def _collect(
        self, topic: str, group: str, limit: int | None
    ) -> tuple[Subscription, _Deliveries]:
        # Always the one replay group: a new group per call would be left behind on
        # the broker, each queueing every later dead letter forever.
        options = SubscribeOptions(
            group=REPLAY_GROUP, prefetch=max(1, min(limit or 256, 256)), start_from="earliest"
        )
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

    async def _list_by_consuming(self, topic: str, group: str, limit: int | None) -> _Letters:
        subscription, deliveries = await self._collect(topic, group, limit)
        try:
            return [
                _listed(ReadRecord(d.topic, d.message_id, d.envelope), d.envelope, None)
                for d in deliveries
                if d.envelope is not None
            ]
        finally:
            for delivery in deliveries:
                with contextlib.suppress(Exception):
                    await delivery.nack(0)
            await subscription.close()

    async def _settle_by_consuming(
        self,
        topic: str,
        group: str,
        limit: int | None,
        ids: Collection[str] | None,
        progress: Progress | None,
        *,
        to_topic: str | None,
        purge: bool,
        to_group: bool | None = False,
    ) -> int:
        """Replay (republish, then ack) or purge (ack) letters read from the queue;
        ``to_group`` routes replays as :meth:`replay` says."""
        group_route = self._group_route(to_group, to_topic)
        # With ids, the wanted letters may sit behind others: read them all.
        subscription, deliveries = await self._collect(topic, group, None if ids else limit)
        wanted: list[tuple[Delivery, DeadLetterRecord]] = []
        for delivery in deliveries:
            envelope = delivery.envelope
            record = None if envelope is None else DeadLetterRecord.from_envelope(envelope)
            if record is None or (not purge and not record.replayable):
                continue  # a reference cannot be replayed as the event; keep it
            if ids is not None and not {record.envelope.id, delivery.message_id} & set(ids):
                continue
            wanted.append((delivery, record))
        wanted = wanted[:limit]
        try:
            for done, (delivery, record) in enumerate(wanted, 1):
                if not purge and record.undecodable:
                    raw = RawMessage(record.raw or b"", record.raw_headers)
                    await self.adapter.publish_raw(to_topic or record.topic or topic, raw)
                elif not purge and group_route:
                    await self.adapter.publish_to_group(
                        record.topic or topic, record.group or group, [record.original]
                    )
                if not purge and not group_route and not record.undecodable:
                    with replaying(delivery.message_id or record.failed_at):
                        await self.adapter.publish(
                            to_topic or record.topic or topic, [record.original]
                        )
                await delivery.ack()
                if progress is not None:
                    progress(done, len(wanted))
        finally:
            for delivery in deliveries:
                if delivery.settled is None:
                    with contextlib.suppress(Exception):
                        await delivery.nack(0)
            await subscription.close()
        return sum(1 for delivery, _ in wanted if delivery.settled == "ack")


_MARKER_TYPES = (REPLAYED_TYPE, PURGED_TYPE)
_MARKER_BATCH = 100


def _listed(record: ReadRecord, envelope: Envelope, marks: set[str] | None) -> ListedDeadLetter:
    base = DeadLetterRecord.from_envelope(envelope)
    values: dict[str, Any] = {f.name: getattr(base, f.name) for f in fields(DeadLetterRecord)}
    marks = marks or set()
    return ListedDeadLetter(
        **values,
        message_id=record.message_id,
        replayed=REPLAYED_TYPE in marks,
        purged=PURGED_TYPE in marks,
    )


def _marker(kind: str, letter: ListedDeadLetter, destination: str | None = None) -> Envelope:
    """The record that ``letter`` (its position and id) was replayed to ``destination``
    or purged."""
    data: dict[str, str] = {"position": letter.message_id, "id": letter.envelope.id}
    if destination is not None:
        data["to"] = destination
    return Envelope.create(
        type=kind,
        source="eventbus.dlq",
        subject=letter.envelope.id,
        correlationid=letter.envelope.correlationid,
        data=json.dumps(data, separators=(",", ":")).encode(),
    )
