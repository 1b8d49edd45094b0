"""The private broker behind :class:`~eventbus.testing.TestBus` and what it records.

:class:`RecordingAdapter` is the memory adapter plus a notebook: every publish
(events, commands, dead letters) and every settlement of a delivery (ack, nack,
reject) is written to a shared :class:`Recorder`, which knows at any moment
which messages each subscribed group has not settled yet. That is what
``TestBus.drain()`` waits on, woken by each settlement rather than by polling.
It only uses the adapter contract (publish, subscribe, Delivery), so it keeps
working whatever the memory broker does inside.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.envelope import Envelope
from eventbus.memory import MemoryAdapter


def is_dead_letter(topic: str, envelope: Envelope) -> bool:
    """Whether a publish to ``topic`` is a dead letter written by the dead-letter step."""
    return topic.endswith(".dlq") and "dlqreason" in envelope.extensions


@dataclass
class Pending:
    """One message a group has not settled yet, as the drain error reports it."""

    topic: str
    group: str
    envelope: Envelope
    deliveries: int = 0
    last: str = "not delivered yet"
    owed: int = 1  # the same envelope published again (a duplicate) is owed twice

    def describe(self) -> str:
        return (
            f"topic {self.topic!r} group {self.group!r}: event {self.envelope.id} "
            f"({self.envelope.type}), {self.deliveries} delivery(ies), {self.last}"
        )


@dataclass
class Recorder:
    """What went through the private broker, shared by every adapter of one TestBus."""

    published: list[tuple[str, Envelope]] = field(default_factory=list)
    dead_letters: list[tuple[str, Envelope]] = field(default_factory=list)
    # topic -> groups subscribed to it; a publish is owed to each of them.
    groups: dict[str, set[str]] = field(default_factory=dict)
    pending: dict[tuple[str, str, str], Pending] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        for envelope in envelopes:
            if is_dead_letter(topic, envelope):
                self.dead_letters.append((topic, envelope))
            else:
                self.published.append((topic, envelope))
            for group in self.groups.get(topic, ()):
                self._owe(topic, group, envelope)
        self.changed.set()

    def _owe(self, topic: str, group: str, envelope: Envelope) -> None:
        item = self.pending.get((topic, group, envelope.id))
        if item is None:
            self.pending[(topic, group, envelope.id)] = Pending(topic, group, envelope)
        else:
            item.owed += 1

    def _settle(self, key: tuple[str, str, str]) -> None:
        item = self.pending.get(key)
        if item is not None:
            item.owed -= 1
            if item.owed <= 0:
                del self.pending[key]

    def on_publish_failed(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        for envelope in envelopes:
            for records in (self.published, self.dead_letters):
                if (topic, envelope) in records:
                    # The last record of it is the one this publish added.
                    del records[len(records) - 1 - records[::-1].index((topic, envelope))]
            for group in self.groups.get(topic, ()):
                self._settle((topic, group, envelope.id))
        self.changed.set()

    def on_subscribe(self, topic: str, options: SubscribeOptions) -> None:
        groups = self.groups.setdefault(topic, set())
        if options.group in groups:
            return
        groups.add(options.group)
        if options.start_from == "earliest":
            # A new group reading history owes everything already on the topic.
            for name, envelope in [*self.published, *self.dead_letters]:
                if name == topic:
                    self._owe(topic, options.group, envelope)

    def on_delivered(self, delivery: Delivery) -> None:
        item = self._item(delivery)
        if item is not None:
            item.deliveries += 1
            item.last = "being handled"

    def on_settled(self, delivery: Delivery, how: str) -> None:
        key = self._key(delivery)
        if key is None:
            return
        if how == "nack":
            item = self.pending.get(key)
            if item is not None:
                item.last = "nacked, waiting for its redelivery"
        else:
            self._settle(key)
        self.changed.set()

    def _key(self, delivery: Delivery) -> tuple[str, str, str] | None:
        if delivery.envelope is None:
            return None
        return delivery.topic, delivery.group, delivery.envelope.id

    def _item(self, delivery: Delivery) -> Pending | None:
        key = self._key(delivery)
        return None if key is None else self.pending.get(key)


class RecordingAdapter(MemoryAdapter):
    """A memory adapter whose publishes and settlements are written to ``recorder``."""

    def __init__(self, url: str, recorder: Recorder) -> None:
        super().__init__(url)
        self.recorder = recorder

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        # Owed before the broker has it, so a consumer settling it at once is seen.
        self.recorder.on_publish(topic, envelopes)
        try:
            await super().publish(topic, envelopes)
        except BaseException:
            self.recorder.on_publish_failed(topic, envelopes)
            raise

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        self.recorder.on_subscribe(topic, options)
        inner = await super().subscribe(topic, options)
        return _RecordingSubscription(inner, self.recorder)


class _RecordingSubscription(Subscription):
    def __init__(self, inner: Subscription, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        async for delivery in self.inner:
            self.recorder.on_delivered(delivery)
            yield _RecordingDelivery(delivery, self.recorder)

    async def close(self) -> None:
        await self.inner.close()


class _RecordingDelivery(Delivery):
    """The broker's delivery, settled through it, with each settlement recorded."""

    __slots__ = ("_inner", "_recorder")
    # It wraps memory deliveries only (RecordingAdapter is a MemoryAdapter), whose
    # message_id is the offset: the same on every redelivery.
    stable_id = True

    def __init__(self, inner: Delivery, recorder: Recorder) -> None:
        # Every transport fact of the broker's delivery (raw headers included: a plain
        # wire format reads its type and correlation there), settled afresh.
        for name in Delivery.__slots__:
            setattr(self, name, getattr(inner, name))
        self._settled = None
        self._inner = inner
        self._recorder = recorder

    async def _ack(self) -> None:
        await self._inner.ack()
        self._recorder.on_settled(self, "ack")

    async def _nack(self, delay: float) -> None:
        await self._inner.nack(delay)
        self._recorder.on_settled(self, "nack")

    async def _reject(self) -> None:
        await self._inner.reject()
        self._recorder.on_settled(self, "reject")
