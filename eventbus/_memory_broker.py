"""The in-process broker behind ``memory://``: topic logs, groups, consumers.

(Over 400 lines on purpose: one in-process broker (logs, groups, consumers) whose parts
share one lock-free state.)

Internal to :mod:`eventbus.memory`: the adapter encodes envelopes into
:class:`Entry` bytes and hands deliveries out of :class:`MemorySubscription`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from eventbus import codec
from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.envelope import Envelope
from eventbus.errors import BrokerConnectionError, ConnectionLostError, DecodeError

HEADER_PREFIX = "ce_"
"""Prefix of the CloudEvents attribute headers in binary mode."""
_FAIR_SHARE = 64
"""Deliveries a subscription hands out in a row before yielding to the event loop."""
PING_INTERVAL = 0.5
"""How often an idle subscription checks its connection and its group, as a real
client pings its broker and looks up its consumer when nothing arrives."""
HALF_OPEN_BOUND = 1.0
"""Seconds of a frozen broker after which a subscription gives up its connection."""


RawHeaders = tuple[tuple[str, bytes], ...]
"""Headers of a message published raw (a foreign producer's), kept as bytes."""

Stored = tuple[str | None, bytes, "dict[str, str] | RawHeaders | None", "Envelope | None", bool]
"""What the adapter stores for one message: key, body, headers, envelope, structured.

The key is what the broker routes by (a real broker's record key); ``envelope``
is set only when encoding is off; ``headers`` is ``None`` in structured mode and
for raw bytes."""

Entry = tuple[int, str | None, bytes, "dict[str, str] | RawHeaders | None", "Envelope | None", bool]
"""One stored message: its offset, then :data:`Stored`.

A plain tuple, not an object: it holds only text, bytes, numbers and a dict of
text, so the garbage collector stops tracking it after its first pass. Every
message of a topic's retention window stays in memory, and as tracked objects
they made each full collection walk all of them."""

OFFSET: Final = 0
KEY: Final = 1
BODY: Final = 2
HEADERS: Final = 3
ENVELOPE: Final = 4
STRUCTURED: Final = 5


def decode_entry(entry: Entry) -> tuple[Envelope | None, str | None]:
    """A fresh envelope read from the stored bytes, or ``None`` and why not."""
    envelope = entry[ENVELOPE]
    if envelope is not None:
        return envelope, None
    try:
        if entry[STRUCTURED]:
            return codec.decode_structured(entry[BODY]), None
        headers = entry[HEADERS]
        if type(headers) is dict:
            # decode_binary_dict's common case without its extra call or its check
            # of the values: the adapter stores headers as encode_binary made them,
            # a dict of text values.
            envelope = codec.decode_own_dict(headers, entry[BODY], HEADER_PREFIX, None, True)
            if envelope is not None:
                return envelope, None
        if isinstance(headers, tuple):  # published raw, with a foreign producer's headers
            return codec.decode_binary(headers, entry[BODY], HEADER_PREFIX), None
        return codec.decode_binary_dict(headers or {}, entry[BODY], HEADER_PREFIX), None
    except DecodeError as exc:
        return None, f"{type(exc).__name__}: {exc}"


class Pending:
    """A message handed out before and given back (nacked, or its consumer left):
    its delivery count and when it may go out again. A message's first delivery
    is its :data:`Entry` itself, without one of these."""

    __slots__ = ("attempt", "available_at", "entry")

    def __init__(self, entry: Entry, attempt: int = 1, available_at: float = 0.0) -> None:
        self.entry = entry
        self.attempt = attempt
        self.available_at = available_at


Item = Entry | Pending
"""What a group's queue holds: an entry not handed out yet, or a :class:`Pending`."""


def _raw_headers(entry: Entry) -> dict[str, bytes] | None:
    """The stored headers of an undecodable message, as bytes (its dead letter keeps them)."""
    headers = entry[HEADERS]
    if headers is None:
        return None
    pairs = headers.items() if isinstance(headers, dict) else headers
    return {
        name: value if isinstance(value, bytes) else str(value).encode() for name, value in pairs
    }


def _requeued(item: Item) -> Pending:
    """``item`` as a :class:`Pending` one delivery further on."""
    if type(item) is tuple:
        return Pending(item, 2)
    assert isinstance(item, Pending)
    item.attempt += 1
    return item


def _entry(item: Item) -> Entry:
    return item.entry if isinstance(item, Pending) else item


def _offset(item: Item) -> int:
    return _entry(item)[OFFSET]


@dataclass
class Group:
    name: str
    pending: deque[Item] = field(default_factory=deque)
    inflight_keys: set[str] = field(default_factory=set)
    consumers: list[MemorySubscription] = field(default_factory=list)
    delayed: int = 0  # pending items requeued with a delay; 0 lets next_due skip its scan

    def notify(self) -> None:
        for consumer in self.consumers:
            consumer.wake()

    def take(self, hold_keys: bool = True) -> Item | None:
        """The first pending message that may go out now, keeping per-key order.

        ``hold_keys``: a key's next message waits until the one handed out before it
        is settled. Without it messages go out in order as soon as they are due, as
        from a partitioned log (Kafka), and only the consumer keeps a key in order.
        """
        pending = self.pending
        if not pending:
            return None
        head = pending[0]
        if type(head) is tuple and not self.delayed:
            # The common case: a first delivery at the front and nothing delayed.
            key = head[KEY] if hold_keys else None
            if key is None:
                return pending.popleft()
            if key not in self.inflight_keys:
                self.inflight_keys.add(key)
                return pending.popleft()
        now = time.monotonic()
        blocked: set[str] = set()
        for index, item in enumerate(pending):
            if type(item) is tuple:
                entry, available_at = item, 0.0
            else:
                assert isinstance(item, Pending)
                entry, available_at = item.entry, item.available_at
            key = entry[KEY] if hold_keys else None
            if key is not None and (key in self.inflight_keys or key in blocked):
                blocked.add(key)
                continue
            if available_at > now:
                if key is not None:
                    blocked.add(key)
                continue
            del pending[index]
            if available_at:
                self.delayed -= 1
            if key is not None:
                self.inflight_keys.add(key)
            return item
        return None

    def backlog(self) -> int:
        """Pending messages that may go out now (delayed ones not counted)."""
        if not self.delayed:
            return len(self.pending)
        now = time.monotonic()
        return sum(1 for p in self.pending if type(p) is not Pending or p.available_at <= now)

    def next_due(self) -> float | None:
        if not self.delayed:
            return None
        now = time.monotonic()
        due = [p.available_at for p in self.pending if type(p) is Pending and p.available_at > now]
        return min(due) if due else None

    def settle(self, item: Item) -> None:
        key = _entry(item)[KEY]
        # Only a held key can have kept another consumer waiting; the settling
        # consumer's own prefetch room is its own wake-up (MemorySubscription.finish).
        if key is not None and key in self.inflight_keys:
            self.inflight_keys.discard(key)
            self.notify()

    def requeue(self, item: Pending, delay: float) -> None:
        key = item.entry[KEY]
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
class Topic:
    log: deque[Entry] = field(default_factory=deque)
    groups: dict[str, Group] = field(default_factory=dict)


DEFAULT_MAX_MESSAGES = 100_000
"""Messages each topic's log retains for replay and reading, newest kept."""


class MemoryBroker:
    """One in-process broker; adapters built from the same ``memory://name`` share it."""

    _brokers: dict[str, MemoryBroker] = {}

    def __init__(self, name: str, max_messages: int = DEFAULT_MAX_MESSAGES) -> None:
        self.name = name
        self.max_messages = max_messages
        self.topics: dict[str, Topic] = {}
        self.generation = 0
        self.refuse_until = 0.0
        # A freeze (half-open fault) lasts until this monotonic time; 0: not frozen.
        self.frozen_until = 0.0
        self.frozen_at = 0.0
        self._offsets = itertools.count()
        # The offset for an Entry built by the caller (see append_entries).
        self.next_offset: Callable[[], int] = self._offsets.__next__

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

    def topic(self, name: str) -> Topic:
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = Topic()
        return topic

    def check_reachable(self, url: str) -> None:
        if time.monotonic() < self.refuse_until:
            raise BrokerConnectionError(
                f"memory broker {url!r} is refusing connections (fault injected); retry later"
            )

    @property
    def frozen(self) -> bool:
        """Whether a freeze fault is in force: nothing is answered, nothing closed."""
        return self.frozen_until > time.monotonic()

    async def wait_answer(self, url: str, bound: float) -> None:
        """Wait while frozen, as a client waits for a reply that does not come; raise
        BrokerConnectionError once ``bound`` seconds passed without one."""
        if not self.frozen:
            return
        deadline = time.monotonic() + bound
        while self.frozen:
            if time.monotonic() >= deadline:
                raise BrokerConnectionError(
                    f"memory broker {url!r} did not answer within {bound:.1f}s "
                    "(frozen: fault injected)"
                )
            await asyncio.sleep(0.02)

    def refusing_for(self) -> float:
        """Seconds the injected refusal still lasts (0 when connections are accepted)."""
        return max(0.0, self.refuse_until - time.monotonic())

    def append(self, topic_name: str, stored: Stored) -> None:
        self.append_many(topic_name, (stored,))

    def append_many(self, topic_name: str, messages: Iterable[Stored]) -> None:
        """Store ``entries`` in order, queue them for every group, wake consumers once.

        The log keeps the newest ``max_messages`` per topic (a retention window, as
        a real broker's): an older entry leaves the log, so a group created later
        with ``start_from="earliest"`` or a ``read()`` no longer sees it, while the
        groups that existed when it was published still get it (it stays in their
        pending queue until settled).
        """
        offsets = self._offsets
        self.append_entries(topic_name, [(next(offsets), *stored) for stored in messages])

    def append_entries(self, topic_name: str, entries: Iterable[Entry]) -> None:
        """:meth:`append_many` for entries built whole by the caller, each with an
        offset from ``next_offset()`` taken in this order (the memory adapter's
        publish: one tuple per message instead of two)."""
        topic = self.topic(topic_name)
        log, groups = topic.log, list(topic.groups.values())
        queues = [group.pending for group in groups]
        for entry in entries:
            log.append(entry)
            for queue in queues:
                queue.append(entry)
        excess = len(log) - self.max_messages
        for _ in range(excess):
            log.popleft()
        for group in groups:
            group.notify()

    def append_to_group(self, topic_name: str, group_name: str, messages: Iterable[Stored]) -> None:
        """Queue ``messages`` for one group only: they never enter the topic's log."""
        topic = self.topic(topic_name)
        group = topic.groups.get(group_name)
        if group is None:
            group = topic.groups[group_name] = Group(group_name)
        for stored in messages:
            group.pending.append((next(self._offsets), *stored))
        group.notify()

    def group(self, topic_name: str, options: SubscribeOptions) -> Group:
        topic = self.topic(topic_name)
        group = topic.groups.get(options.group)
        if group is None:
            group = topic.groups[options.group] = Group(options.group)
            if options.start_from == "earliest":
                group.pending.extend(topic.log)
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

    async def freeze(self, seconds: float | None = None) -> None:
        """Fault hook: answer nothing, close nothing (a half-open connection), for
        ``seconds`` or until :meth:`thaw`. Subscriptions hand out nothing and notice
        it after their ping bound; publishes and settles wait for an answer."""
        self.frozen_at = time.monotonic()
        self.frozen_until = float("inf") if seconds is None else self.frozen_at + seconds

    async def thaw(self) -> None:
        """Fault hook: end a freeze."""
        self.frozen_until = 0.0
        for topic in self.topics.values():
            for group in topic.groups.values():
                group.notify()

    async def heal(self) -> None:
        """Fault hook: end a refusal and a freeze now."""
        self.refuse_until = 0.0
        await self.thaw()

    def delete_group(self, topic_name: str, group_name: str) -> None:
        """Fault hook: delete a group underneath its consumers, with what it held (as
        deleting a queue or consumer on a real broker does)."""
        topic = self.topics.get(topic_name)
        if topic is not None:
            topic.groups.pop(group_name, None)


class MemoryDelivery(Delivery):
    __slots__ = ("_item", "_owner")
    stable_id = True  # message_id is the offset: the same on every redelivery

    def __init__(self, owner: MemorySubscription, item: Item, topic: str) -> None:
        # The base class's fields set here directly: its keyword __init__ costs as
        # much as the rest of a delivery's setup, once per message.
        if type(item) is tuple:
            entry, attempt = item, 1
        else:
            assert isinstance(item, Pending)
            entry, attempt = item.entry, item.attempt
        envelope, error = decode_entry(entry)
        self.topic = topic
        self.group = owner.group.name
        self.envelope = envelope
        self.attempt = attempt
        self.raw = entry[BODY] if envelope is None else None
        self.raw_headers = _raw_headers(entry) if envelope is None else None
        self.decode_error = error
        self.received_at = time.time()
        self._settled = None
        self._owner = owner
        self._item = item

    @property
    def message_id(self) -> str:  # type: ignore[override]
        """The message's broker-wide offset, as text: made when asked (logs, error
        paths, tests), not once per delivery on the success path."""
        return str(_entry(self._item)[OFFSET])

    async def ack(self) -> None:
        # Delivery.ack without its coroutines (_settle_with, _ack) or the frozen
        # check: with no freeze ever injected (frozen_until 0) the settle cannot
        # fail, and this runs once per handled message. Same rules otherwise. (So
        # the step to patch for a slow or failing ack is this method, not _ack.)
        owner = self._owner
        if owner.broker.frozen_until:
            await Delivery.ack(self)  # the general path, whose settle may fail
            return
        settled = self._settled
        if settled is None:
            owner.finish(self._item, None)
            self._settled = "ack"  # after: a settle that raised is not recorded
        elif settled != "ack":
            self._settle("ack")  # raises DeliveryAlreadySettledError, naming both

    async def _ack(self) -> None:
        self._owner.check_answering()
        self._owner.finish(self._item, None)

    async def _nack(self, delay: float) -> None:
        self._owner.check_answering()
        self._owner.finish(self._item, delay)

    async def _reject(self) -> None:
        self._owner.check_answering()
        # No native dead-letter queue here: the bus's dead-letter middleware keeps
        # the message, so reject only drops it.
        self._owner.finish(self._item, None)


class MemorySubscription(Subscription):
    def __init__(
        self,
        broker: MemoryBroker,
        topic: str,
        group: Group,
        options: SubscribeOptions,
        hold_keys: bool = True,
    ) -> None:
        self.broker = broker
        self.hold_keys = hold_keys
        self.topic = topic
        self.group = group
        self.options = options
        self.generation = broker.generation
        self.inflight: dict[int, Item] = {}
        self.closed = False
        self.lost = False
        self._wake = asyncio.Event()
        group.consumers.append(self)

    def wake(self) -> None:
        wake = self._wake
        if not wake.is_set():
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                wake.set()

    def check_answering(self) -> None:
        """A settle on a frozen connection gets no answer: fail it (the delivery stays
        unsettled and comes back once the connection is found dead)."""
        if self.broker.frozen:
            raise BrokerConnectionError(
                f"memory broker did not answer the settle on topic {self.topic!r} group "
                f"{self.group.name!r} (frozen: fault injected)"
            )

    async def backlog(self) -> int | None:
        """Messages of the group that could go out now."""
        return self.group.backlog()

    def _check_group(self) -> None:
        """Join the group again if it was deleted underneath (the fault hook), as a
        real adapter re-creates its consumer: honouring ``start_from``."""
        topic = self.broker.topics.get(self.topic)
        if topic is not None and topic.groups.get(self.group.name) is self.group:
            return
        old = self.group
        with contextlib.suppress(ValueError):
            old.consumers.remove(self)
        self.inflight.clear()  # what the deleted group held went with it
        self.group = self.broker.group(self.topic, self.options)
        self.group.consumers.append(self)

    def lose_connection(self) -> None:
        self.lost = True
        self._detach()
        self.wake()

    def finish(self, item: Item, requeue_delay: float | None) -> None:
        if self.inflight.pop(id(item), None) is None:
            return  # settled after the connection dropped: it was already requeued
        if requeue_delay is None:
            self.group.settle(item)
        else:
            self.group.requeue(_requeued(item), requeue_delay)
        self.wake()

    def _detach(self) -> None:
        with contextlib.suppress(ValueError):
            self.group.consumers.remove(self)
        # Unsettled deliveries go back to the group, in their original order.
        for item in sorted(self.inflight.values(), key=_offset, reverse=True):
            self.group.requeue(_requeued(item), 0.0)
        self.inflight.clear()

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle | None = None
        handed = 0
        while not self.closed:
            if self.lost:
                raise ConnectionLostError(
                    f"memory broker connection dropped (topic {self.topic!r}, "
                    f"group {self.group.name!r})"
                )
            if self.broker.frozen_until:
                self._ping()
                if self.broker.frozen:  # nothing arrives over a frozen connection
                    await asyncio.sleep(0.05)
                    continue
            room = len(self.inflight) < self.options.prefetch
            item = self.group.take(self.hold_keys) if room else None
            if item is not None:
                delivery = MemoryDelivery(self, item, self.topic)
                self.inflight[id(item)] = item
                yield delivery
                handed += 1
                if handed % _FAIR_SHARE == 0:
                    # A consumer that handles each delivery inline never waits while
                    # messages are pending: let other tasks (publishers, other
                    # subscriptions) run now and then, as a real broker's I/O would.
                    await asyncio.sleep(0)
                continue
            self._wake.clear()
            # With prefetch full, the next settle wakes us; only an empty hand-out
            # may be waiting on a delayed message.
            due = self.group.next_due() if room else None
            if due is not None:
                if timer is not None:
                    timer.cancel()
                timer = loop.call_later(max(0.0, due - time.monotonic()), self.wake)
            try:
                # Idle: look at the connection and the group now and then (ping).
                await asyncio.wait_for(self._wake.wait(), PING_INTERVAL)
            except TimeoutError:
                self._ping()

    def _ping(self) -> None:
        broker = self.broker
        if broker.frozen:
            if time.monotonic() - broker.frozen_at >= HALF_OPEN_BOUND:
                self.lose_connection()
                raise ConnectionLostError(
                    f"memory broker did not answer a ping for {HALF_OPEN_BOUND:.1f}s "
                    f"(topic {self.topic!r}, group {self.group.name!r}): the connection "
                    "is half-open (frozen: fault injected)"
                )
            return
        self._check_group()

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._detach()
            self.wake()
