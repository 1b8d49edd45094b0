"""The in-memory adapter: a real in-process broker, not a mock.

It keeps every message for the life of the process, so a group created later
can replay from the earliest; competing consumers share a group, groups fan
out; messages with the same partition key are handed out one at a time in
order; nack redelivers after its delay; messages over the size limit are
refused. ``memory://`` is the process-wide broker, ``memory://name`` a separate
one, so several buses in one process talk to each other like services would.

Every message is encoded on publish and decoded on delivery with the same
CloudEvents codec a real broker's adapter uses (binary mode: headers plus body;
``?mode=structured``: one JSON document), so a codec bug or an envelope that does
not survive the wire fails here first, and size limits apply to the encoded
bytes. ``?encode=false`` passes envelope objects through untouched, for
benchmarks only.

It obeys the same conformance suite as the real adapters, including the
reconnect cases through :meth:`MemoryBroker.drop_connections`, and its
:meth:`MemoryAdapter.health` reflects the connection and the fault hooks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, cast
from urllib.parse import parse_qs, urlsplit

from eventbus import codec
from eventbus.adapter import (
    Adapter,
    Capabilities,
    Delivery,
    HealthReport,
    ReadRecord,
    SubscribeOptions,
    Subscription,
)
from eventbus.envelope import Envelope
from eventbus.errors import (
    BrokerConnectionError,
    ConnectionLostError,
    DecodeError,
    InvalidURLError,
    TopicNotFoundError,
)

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
HEADER_PREFIX = "ce_"
"""Prefix of the CloudEvents attribute headers in binary mode."""
Mode = Literal["binary", "structured"]
_OPTIONS = ("max_message_bytes", "mode", "encode", "hold_keys")


@dataclass(slots=True)
class _Entry:
    """One stored message as a broker keeps it: headers and body bytes, plus the key
    the broker routes by (a real broker's record key). ``envelope`` is set only when
    encoding is off; ``headers`` is ``None`` in structured mode and for raw bytes."""

    offset: int
    key: str | None
    body: bytes
    headers: dict[str, str] | None = None
    envelope: Envelope | None = None
    structured: bool = False

    def decode(self) -> tuple[Envelope | None, str | None]:
        """A fresh envelope read from the stored bytes, or ``None`` and why not."""
        if self.envelope is not None:
            return self.envelope, None
        try:
            if self.structured:
                return codec.decode_structured(self.body), None
            return codec.decode_binary(self.headers or {}, self.body, HEADER_PREFIX), None
        except DecodeError as exc:
            return None, f"{type(exc).__name__}: {exc}"


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

    def take(self, hold_keys: bool = True) -> _Pending | None:
        """The first pending message that may go out now, keeping per-key order.

        ``hold_keys``: a key's next message waits until the one handed out before it
        is settled. Without it messages go out in order as soon as they are due, as
        from a partitioned log (Kafka), and only the consumer keeps a key in order.
        """
        if not self.pending:
            return None
        now = time.monotonic()
        head = self.pending[0]
        key = head.entry.key if hold_keys else None
        if head.available_at <= now and (key is None or key not in self.inflight_keys):
            self.pending.popleft()
            return self._hand_out(head, hold_keys)
        blocked: set[str] = set()
        for index, item in enumerate(self.pending):
            key = item.entry.key if hold_keys else None
            if key is not None and (key in self.inflight_keys or key in blocked):
                blocked.add(key)
                continue
            if item.available_at > now:
                if key is not None:
                    blocked.add(key)
                continue
            del self.pending[index]
            return self._hand_out(item, hold_keys)
        return None

    def _hand_out(self, item: _Pending, hold_keys: bool) -> _Pending:
        if item.available_at:
            self.delayed -= 1
        key = item.entry.key
        if key is not None and hold_keys:
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

    def refusing_for(self) -> float:
        """Seconds the injected refusal still lasts (0 when connections are accepted)."""
        return max(0.0, self.refuse_until - time.monotonic())

    def append(self, topic_name: str, entry: _Entry) -> None:
        topic = self.topic(topic_name)
        entry.offset = next(self._offsets)
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
        envelope, error = entry.decode()
        super().__init__(
            topic=topic,
            group=owner.group.name,
            envelope=envelope,
            attempt=item.attempt,
            message_id=str(entry.offset),
            raw=entry.body if envelope is None else None,
            decode_error=error,
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
        self,
        broker: MemoryBroker,
        topic: str,
        group: _Group,
        options: SubscribeOptions,
        hold_keys: bool = True,
    ) -> None:
        self.broker = broker
        self.hold_keys = hold_keys
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
            item = self.group.take(self.hold_keys) if room else None
            if item is not None:
                delivery = _MemoryDelivery(self, item, self.topic)
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


@dataclass(frozen=True, slots=True)
class _Settings:
    name: str
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    mode: Mode = "binary"
    encode: bool = True
    hold_keys: bool = True


def _flag(url: str, options: dict[str, str], name: str) -> bool:
    value = options.get(name, "true").lower()
    if value not in ("true", "false"):
        raise InvalidURLError(f"{name} in {url!r} must be 'true' or 'false', not {value!r}")
    return value == "true"


def _parse(url: str) -> _Settings:
    parts = urlsplit(url)
    if parts.scheme != "memory":
        raise InvalidURLError(f"memory adapter got {url!r}; use memory:// or memory://name")
    options = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    unknown = set(options) - set(_OPTIONS)
    if unknown:
        raise InvalidURLError(
            f"unknown option(s) {sorted(unknown)} in {url!r}; the memory adapter "
            f"accepts only {', '.join(_OPTIONS)}"
        )
    try:
        limit = int(options.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES))
    except ValueError as exc:
        raise InvalidURLError(f"max_message_bytes in {url!r} must be an integer") from exc
    mode = options.get("mode", "binary")
    if mode not in ("binary", "structured"):
        raise InvalidURLError(f"mode in {url!r} must be 'binary' or 'structured', not {mode!r}")
    return _Settings(parts.netloc or "default", limit, cast(Mode, mode),
                     _flag(url, options, "encode"), _flag(url, options, "hold_keys"))


class MemoryAdapter(Adapter):
    """In-process broker adapter for ``memory://[name][?option=value&...]``.

    Options: ``max_message_bytes`` (default 1 MiB, checked against the encoded
    message), ``mode`` (``binary``, the default: attributes as headers and data as
    the body; ``structured``: one JSON document, as a broker without headers
    carries it) and ``encode`` (``true``, the default; ``false`` skips the codec
    and hands out the published envelope objects, for benchmarks only: it hides
    every codec bug) and ``hold_keys`` (``true``, the default: a key's next message
    is handed out only once the previous one is settled; ``false``: in order but at
    once, as from a partitioned log such as Kafka, so only the consumer's key lanes
    keep a key in order, which the conformance suite uses to test them).
    """

    schemes = ("memory",)

    def __init__(self, url: str = "memory://") -> None:
        super().__init__(url)
        self.settings = _parse(url)
        self.broker = MemoryBroker.named(self.settings.name)
        self.capabilities = Capabilities(
            persistent=True,
            consumer_groups=True,
            fanout=True,
            ordering="per_key",
            redelivery=True,
            native_delay=True,
            native_dead_letter=False,
            replay=True,
            headers=self.settings.mode == "binary",
            max_message_bytes=self.settings.max_message_bytes,
        )
        self._subscriptions: list[_MemorySubscription] = []
        self._state: Literal["new", "connected", "closed"] = "new"

    @property
    def faults(self) -> MemoryBroker:
        """The fault hooks (drop/refuse connections) of this adapter's broker."""
        return self.broker

    async def connect(self) -> None:
        self.broker.check_reachable(self.url)
        self._state = "connected"

    async def close(self) -> None:
        for subscription in self._subscriptions:
            await subscription.close()
        self._subscriptions.clear()
        if self._state == "connected":
            self._state = "closed"

    async def health(self) -> HealthReport:
        """Ok only while connected and the broker accepts connections (fault hooks)."""
        info = {"broker": self.broker.name, "mode": self._mode_name()}
        if self._state != "connected":
            what = "was closed" if self._state == "closed" else "was never connected"
            return HealthReport(False, f"memory adapter for {self.url!r} {what}; call "
                                "connect() (or start the bus) first", info)
        refusing = self.broker.refusing_for()
        if refusing > 0:
            return HealthReport(False, f"memory broker {self.broker.name!r} refuses "
                                f"connections for another {refusing:.1f}s (fault injected)",
                                info)
        return HealthReport(True, f"memory broker {self.broker.name!r} accepts connections",
                            info)

    def _mode_name(self) -> str:
        return self.settings.mode if self.settings.encode else "unencoded"

    def encode(self, envelope: Envelope) -> tuple[_Entry, int]:
        """The stored form of ``envelope`` and its size in bytes, as on a real broker."""
        key = envelope.partitionkey
        if not self.settings.encode:
            limit = self.settings.max_message_bytes
            return _Entry(0, key, b"", envelope=envelope), envelope.size_hint(limit)
        if self.settings.mode == "structured":
            body = codec.encode_structured(envelope)
            return _Entry(0, key, body, structured=True), len(body)
        headers, body = codec.encode_binary(envelope, HEADER_PREFIX)
        size = len(body) + sum(len(k.encode()) + len(v.encode()) for k, v in headers.items())
        return _Entry(0, key, body, headers=headers), size

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        self.broker.check_reachable(self.url)
        entries = []
        for envelope in envelopes:
            entry, size = self.encode(envelope)
            self.check_size(topic, envelope, size)
            entries.append(entry)
        for entry in entries:
            self.broker.append(topic, entry)

    async def publish_raw(self, topic: str, payload: bytes) -> None:
        """Store ``payload`` as the body of a message without headers: in binary mode it
        never decodes; in structured mode it decodes if it is a structured CloudEvent."""
        self.broker.check_reachable(self.url)
        self.broker.append(topic, _Entry(0, None, payload,
                                         structured=self.settings.mode == "structured"))

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        self.broker.check_reachable(self.url)
        group = self.broker.group(topic, options)
        subscription = _MemorySubscription(self.broker, topic, group, options,
                                           self.settings.hold_keys)
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
    """What a reader sees of one stored entry: decoded from its bytes, as a delivery is."""
    envelope, error = entry.decode()
    if envelope is None:
        return ReadRecord(topic, str(entry.offset), None, entry.body, error)
    return ReadRecord(topic, str(entry.offset), envelope)
