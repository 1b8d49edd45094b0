"""The in-memory adapter: a real in-process broker, not a mock.

It keeps every message for the life of the process, so a group created later
can replay from the earliest; competing consumers share a group, groups fan
out; messages with the same partition key are handed out one at a time in
order; nack redelivers after its delay; messages over the size limit are
refused. ``memory://`` is the process-wide broker, ``memory://name`` a separate
one, so several buses in one process talk to each other like services would.

It obeys the same conformance suite as the real adapters, including the
reconnect cases through :meth:`MemoryBroker.drop_connections`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from eventbus.adapter import (
    Adapter,
    Capabilities,
    Delivery,
    ReadRecord,
    SubscribeOptions,
    Subscription,
)
from eventbus.envelope import Envelope
from eventbus.errors import (
    BrokerConnectionError,
    ConnectionLostError,
    InvalidURLError,
    TopicNotFoundError,
)

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024


@dataclass(slots=True)
class _Entry:
    offset: int
    envelope: Envelope | None
    raw: bytes | None = None

    @property
    def key(self) -> str | None:
        return self.envelope.partitionkey if self.envelope is not None else None


@dataclass(slots=True)
class _Pending:
    entry: _Entry
    attempt: int = 1
    available_at: float = 0.0


@dataclass
class _Group:
    name: str
    pending: deque[_Pending] = field(default_factory=deque)
    inflight_keys: set[str] = field(default_factory=set)
    consumers: list[_MemorySubscription] = field(default_factory=list)
    delayed: int = 0  # pending items requeued with a delay; 0 lets next_due skip its scan

    def notify(self) -> None:
        for consumer in self.consumers:
            consumer.wake()

    def take(self) -> _Pending | None:
        """The first pending message that may go out now, keeping per-key order."""
        if not self.pending:
            return None
        now = time.monotonic()
        head = self.pending[0]
        key = head.entry.key
        if head.available_at <= now and (key is None or key not in self.inflight_keys):
            self.pending.popleft()
            return self._hand_out(head)
        blocked: set[str] = set()
        for index, item in enumerate(self.pending):
            key = item.entry.key
            if key is not None and (key in self.inflight_keys or key in blocked):
                blocked.add(key)
                continue
            if item.available_at > now:
                if key is not None:
                    blocked.add(key)
                continue
            del self.pending[index]
            return self._hand_out(item)
        return None

    def _hand_out(self, item: _Pending) -> _Pending:
        if item.available_at:
            self.delayed -= 1
        key = item.entry.key
        if key is not None:
            self.inflight_keys.add(key)
        return item

    def next_due(self) -> float | None:
        if not self.delayed:
            return None
        now = time.monotonic()
        due = [p.available_at for p in self.pending if p.available_at > now]
        return min(due) if due else None

    def settle(self, item: _Pending) -> None:
        key = item.entry.key
        if key is not None:
            self.inflight_keys.discard(key)
        self.notify()

    def requeue(self, item: _Pending, delay: float) -> None:
        key = item.entry.key
        if key is not None:
            self.inflight_keys.discard(key)
        if delay > 0:
            if not item.available_at:
                self.delayed += 1
            item.available_at = time.monotonic() + delay
        elif item.available_at:
            self.delayed -= 1
            item.available_at = 0.0
        # Back at the front, so it stays ahead of later messages with its key.
        self.pending.appendleft(item)
        self.notify()
        if delay > 0:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_later(delay, self.notify)


@dataclass
class _Topic:
    log: list[_Entry] = field(default_factory=list)
    groups: dict[str, _Group] = field(default_factory=dict)


class MemoryBroker:
    """One in-process broker; adapters built from the same ``memory://name`` share it."""

    _brokers: dict[str, MemoryBroker] = {}

    def __init__(self, name: str) -> None:
        self.name = name
        self.topics: dict[str, _Topic] = {}
        self.generation = 0
        self.refuse_until = 0.0
        self._offsets = itertools.count()

    @classmethod
    def discard(cls, name: str) -> None:
        """Forget the broker called ``name`` and every message it kept (for tests)."""
        cls._brokers.pop(name, None)

    @classmethod
    def named(cls, name: str) -> MemoryBroker:
        """The broker called ``name`` in this process, created on first use."""
        broker = cls._brokers.get(name)
        if broker is None:
            broker = cls._brokers[name] = cls(name)
        return broker

    def topic(self, name: str) -> _Topic:
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = _Topic()
        return topic

    def check_reachable(self, url: str) -> None:
        if time.monotonic() < self.refuse_until:
            raise BrokerConnectionError(
                f"memory broker {url!r} is refusing connections (fault injected); retry later"
            )

    def append(self, topic_name: str, envelope: Envelope | None, raw: bytes | None) -> None:
        topic = self.topic(topic_name)
        entry = _Entry(next(self._offsets), envelope, raw)
        topic.log.append(entry)
        for group in topic.groups.values():
            group.pending.append(_Pending(entry))
            group.notify()

    def group(self, topic_name: str, options: SubscribeOptions) -> _Group:
        topic = self.topic(topic_name)
        group = topic.groups.get(options.group)
        if group is None:
            group = topic.groups[options.group] = _Group(options.group)
            if options.start_from == "earliest":
                group.pending.extend(_Pending(entry) for entry in topic.log)
        return group

    async def drop_connections(self) -> None:
        """Fault hook: every open subscription loses its connection at once."""
        self.generation += 1
        for topic in self.topics.values():
            for group in topic.groups.values():
                for consumer in list(group.consumers):
                    consumer.lose_connection()

    async def refuse_connections(self, seconds: float) -> None:
        """Fault hook: drop connections and refuse new ones for ``seconds``."""
        self.refuse_until = time.monotonic() + seconds
        await self.drop_connections()


class _MemoryDelivery(Delivery):
    __slots__ = ("_item", "_owner")

    def __init__(self, owner: _MemorySubscription, item: _Pending, topic: str) -> None:
        entry = item.entry
        super().__init__(
            topic=topic,
            group=owner.group.name,
            envelope=entry.envelope,
            attempt=item.attempt,
            message_id=str(entry.offset),
            raw=entry.raw,
            decode_error=None if entry.envelope is not None else "payload is not a CloudEvent",
        )
        self._owner = owner
        self._item = item

    async def _ack(self) -> None:
        self._owner.finish(self._item, None)

    async def _nack(self, delay: float) -> None:
        self._owner.finish(self._item, delay)

    async def _reject(self) -> None:
        # No native dead-letter queue here: the bus's dead-letter middleware keeps
        # the message, so reject only drops it.
        self._owner.finish(self._item, None)


class _MemorySubscription(Subscription):
    def __init__(
        self, broker: MemoryBroker, topic: str, group: _Group, options: SubscribeOptions
    ) -> None:
        self.broker = broker
        self.topic = topic
        self.group = group
        self.options = options
        self.generation = broker.generation
        self.inflight: dict[int, _Pending] = {}
        self.closed = False
        self.lost = False
        self._wake = asyncio.Event()
        group.consumers.append(self)

    def wake(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._wake.set()

    def lose_connection(self) -> None:
        self.lost = True
        self._detach()
        self.wake()

    def finish(self, item: _Pending, requeue_delay: float | None) -> None:
        if self.inflight.pop(id(item), None) is None:
            return  # settled after the connection dropped: it was already requeued
        if requeue_delay is None:
            self.group.settle(item)
        else:
            item.attempt += 1
            self.group.requeue(item, requeue_delay)
        self.wake()

    def _detach(self) -> None:
        with contextlib.suppress(ValueError):
            self.group.consumers.remove(self)
        # Unsettled deliveries go back to the group, in their original order.
        for item in sorted(self.inflight.values(), key=lambda p: p.entry.offset, reverse=True):
            item.attempt += 1
            self.group.requeue(item, 0.0)
        self.inflight.clear()

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None
        while not self.closed:
            if self.lost:
                raise ConnectionLostError(
                    f"memory broker connection dropped (topic {self.topic!r}, "
                    f"group {self.group.name!r})"
                )
            room = len(self.inflight) < self.options.prefetch
            item = self.group.take() if room else None
            if item is not None:
                delivery = _MemoryDelivery(self, item, self.topic)
                if self.options.auto_ack:
                    delivery._settled = "ack"
                    self.group.settle(item)
                else:
                    self.inflight[id(item)] = item
                yield delivery
                continue
            self._wake.clear()
            # With prefetch full, the next settle wakes us; only an empty hand-out
            # may be waiting on a delayed message.
            due = self.group.next_due() if room else None
            if due is not None:
                if timer is not None:
                    timer.cancel()
                timer = loop.call_later(max(0.0, due - time.monotonic()), self.wake)
            await self._wake.wait()

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._detach()
            self.wake()


def _parse(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "memory":
        raise InvalidURLError(f"memory adapter got {url!r}; use memory:// or memory://name")
    options = parse_qs(parts.query)
    unknown = set(options) - {"max_message_bytes"}
    if unknown:
        raise InvalidURLError(
            f"unknown option(s) {sorted(unknown)} in {url!r}; the memory adapter "
            "accepts only max_message_bytes"
        )
    try:
        limit = int(options.get("max_message_bytes", [DEFAULT_MAX_MESSAGE_BYTES])[0])
    except ValueError as exc:
        raise InvalidURLError(f"max_message_bytes in {url!r} must be an integer") from exc
    return parts.netloc or "default", limit


class MemoryAdapter(Adapter):
    """In-process broker adapter for ``memory://[name][?max_message_bytes=N]``."""

    schemes = ("memory",)

    def __init__(self, url: str = "memory://") -> None:
        super().__init__(url)
        name, limit = _parse(url)
        self.broker = MemoryBroker.named(name)
        self.capabilities = Capabilities(
            persistent=True,
            consumer_groups=True,
            fanout=True,
            ordering="per_key",
            redelivery=True,
            native_delay=True,
            native_dead_letter=False,
            replay=True,
            headers=True,
            max_message_bytes=limit,
        )
        self._subscriptions: list[_MemorySubscription] = []

    @property
    def faults(self) -> MemoryBroker:
        """The fault hooks (drop/refuse connections) of this adapter's broker."""
        return self.broker

    async def connect(self) -> None:
        self.broker.check_reachable(self.url)

    async def close(self) -> None:
        for subscription in self._subscriptions:
            await subscription.close()
        self._subscriptions.clear()

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        self.broker.check_reachable(self.url)
        limit = self.capabilities.max_message_bytes
        for envelope in envelopes:
            self.check_size(topic, envelope, envelope.size_hint(limit))
        for envelope in envelopes:
            self.broker.append(topic, envelope, None)

    async def publish_raw(self, topic: str, payload: bytes) -> None:
        self.broker.check_reachable(self.url)
        self.broker.append(topic, None, payload)

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        self.broker.check_reachable(self.url)
        group = self.broker.group(topic, options)
        subscription = _MemorySubscription(self.broker, topic, group, options)
        self._subscriptions = [s for s in self._subscriptions if not s.closed]
        self._subscriptions.append(subscription)
        return subscription

    async def read(self, topic: str, *, limit: int | None = None) -> list[ReadRecord]:
        """The retained messages of ``topic``, oldest first, straight from its log.

        No group is created or touched; a topic nobody ever published to or
        subscribed raises :class:`~eventbus.errors.TopicNotFoundError`.
        """
        self.broker.check_reachable(self.url)
        stored = self.broker.topics.get(topic)  # .topic() would create it
        if stored is None:
            raise TopicNotFoundError(
                f"topic {topic!r} does not exist on memory broker {self.broker.name!r}: "
                "nothing was ever published to it; check the name"
            )
        entries = stored.log if limit is None else stored.log[: max(0, limit)]
        return [_read_record(topic, entry) for entry in entries]


def _read_record(topic: str, entry: _Entry) -> ReadRecord:
    """What a reader sees of one stored entry."""
    if entry.envelope is None:
        return ReadRecord(topic, str(entry.offset), None, entry.raw, "payload is not a CloudEvent")
    return ReadRecord(topic, str(entry.offset), entry.envelope)
