"""The in-memory adapter: a real in-process broker, not a mock.

It keeps the newest messages of each topic (``max_messages``, default 100,000)
for the life of the process, so a group created later can replay from the
earliest retained one; competing consumers share a group, groups fan
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

from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import islice
from typing import Literal
from urllib.parse import urlsplit

from eventbus import codec
from eventbus._memory_broker import (
    BODY,
    HALF_OPEN_BOUND,
    HEADER_PREFIX,
    OFFSET,
    Entry,
    MemoryBroker,
    MemorySubscription,
    Stored,
    decode_entry,
)
from eventbus.adapter import (
    Adapter,
    Capabilities,
    HealthReport,
    ReadRecord,
    StartFrom,
    SubscribeOptions,
    Subscription,
)
from eventbus.envelope import Envelope
from eventbus.errors import InvalidURLError, TopicNotFoundError, UnsupportedOperationError
from eventbus.raw_message import RawMessage
from eventbus.url_options import (
    OptionParser,
    choice,
    integer,
    parse_options,
    query_pairs,
    shared,
    strict_flag,
)

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "HEADER_PREFIX", "MemoryAdapter", "MemoryBroker"]

DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
Mode = Literal["binary", "structured"]


@dataclass(frozen=True, slots=True)
class _Settings:
    name: str
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    mode: Mode = "binary"
    encode: bool = True
    hold_keys: bool = True
    max_messages: int | None = None
    start_from: StartFrom | None = None


_OPTIONS: dict[str, OptionParser] = {
    "max_message_bytes": integer(1),
    "max_messages": integer(
        1, allowed="must be a positive integer (the messages each topic retains)"
    ),
    "mode": choice("binary", "structured"),
    "encode": strict_flag,
    "hold_keys": strict_flag,
    **shared("start_from"),
}


def _parse(url: str) -> _Settings:
    """The memory URL's options, parsed as every adapter's are (one loop, one set of
    value parsers, an option given twice refused)."""
    shown = url  # a memory URL names an in-process broker: nothing in it is secret
    parts = urlsplit(url)
    if parts.scheme != "memory":
        raise InvalidURLError(f"memory adapter got {shown!r}; use memory:// or memory://name")
    options = parse_options(query_pairs(parts.query), _OPTIONS, name="memory", shown=shown)
    return _Settings(parts.netloc or "default", **options)


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
    keep a key in order, which the conformance suite uses to test them) and
    ``max_messages`` (default 100,000: how many messages each topic's log retains,
    newest kept, for replay and :meth:`read`; see
    :meth:`~eventbus._memory_broker.MemoryBroker.append_many`. It applies to the
    broker the URL names, so the last adapter that sets it for a name decides) and
    ``start_from`` (``earliest`` or ``latest``: where a new group starts when its
    subscription does not say). An option given twice is an error, as on every adapter.
    """

    schemes = ("memory",)

    def __init__(self, url: str = "memory://") -> None:
        super().__init__(url)
        self.settings = _parse(url)
        self.start_from = self.settings.start_from
        self.broker = MemoryBroker.named(self.settings.name)
        if self.settings.max_messages is not None:
            self.broker.max_messages = self.settings.max_messages
        # A durable broker, in process, except:
        self.capabilities = replace(
            Capabilities.DURABLE,
            max_message_bytes=self.settings.max_message_bytes,
            half_open_bound=HALF_OPEN_BOUND,
            headers=self.settings.mode == "binary",  # structured mode: no headers
            # No lease: an unsettled delivery is held until it is settled, its
            # subscription closes or its connection is found dead.
            lease=False,
        )
        self._subscriptions: list[MemorySubscription] = []
        self._state: Literal["new", "connected", "closed"] = "new"

    @property
    def faults(self) -> MemoryBroker:
        """The fault hooks (drop/refuse connections) of this adapter's broker."""
        return self.broker

    async def connect(self) -> None:
        self.broker.check_reachable(self.url)
        await self.broker.wait_answer(self.url, HALF_OPEN_BOUND)
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
            return HealthReport(
                False,
                f"memory adapter for {self.url!r} {what}; call connect() (or start the bus) first",
                info,
            )
        if self.broker.frozen:
            return HealthReport(
                False,
                f"memory broker {self.broker.name!r} does not answer (frozen: fault injected)",
                info,
            )
        refusing = self.broker.refusing_for()
        if refusing > 0:
            return HealthReport(
                False,
                f"memory broker {self.broker.name!r} refuses "
                f"connections for another {refusing:.1f}s (fault injected)",
                info,
            )
        return HealthReport(True, f"memory broker {self.broker.name!r} accepts connections", info)

    def _mode_name(self) -> str:
        return self.settings.mode if self.settings.encode else "unencoded"

    def encode(self, envelope: Envelope) -> tuple[Stored, int]:
        """The stored form of ``envelope`` and its size in bytes, as on a real broker."""
        key = envelope.partitionkey
        if not self.settings.encode:
            limit = self.settings.max_message_bytes
            return (key, b"", None, envelope, False), codec.size_bound(envelope, limit)
        if self.settings.mode == "structured":
            body = codec.encode_structured(envelope)
            return (key, body, None, None, True), len(body)
        headers, body = codec.encode_binary(envelope, HEADER_PREFIX)
        return (key, body, headers, None, False), codec.binary_size(headers, body)

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        self.broker.check_reachable(self.url)
        if self.broker.frozen_until:
            await self.broker.wait_answer(self.url, HALF_OPEN_BOUND)
        limit = self.capabilities.max_message_bytes
        if self.settings.encode and self.settings.mode == "binary":
            # encode() written out for the default mode: once per published message,
            # each built as its whole stored entry (offsets are broker-wide, so the
            # ones a refused batch took leave a gap, as other topics' do).
            next_offset = self.broker.next_offset
            whole: list[Entry] = []
            encoded = codec.encode_binary_sized_many(envelopes, HEADER_PREFIX)
            for envelope, (headers, body, size) in zip(envelopes, encoded, strict=True):
                if size > limit:
                    self.check_size(topic, envelope, size)  # raises, naming the event
                whole.append((next_offset(), envelope.partitionkey, body, headers, None, False))
            self.broker.append_entries(topic, whole)
            return
        entries: list[Stored] = []
        encode = self.encode
        for envelope in envelopes:
            entry, size = encode(envelope)
            if size > limit:
                self.check_size(topic, envelope, size)
            entries.append(entry)
        self.broker.append_many(topic, entries)

    async def publish_to_group(self, topic: str, group: str, envelopes: Sequence[Envelope]) -> None:
        """Queue ``envelopes`` for ``group`` alone (not in the topic's log, so other
        groups and readers never see them); the group is created if new."""
        self.broker.check_reachable(self.url)
        await self.broker.wait_answer(self.url, HALF_OPEN_BOUND)
        entries = []
        limit = self.capabilities.max_message_bytes
        for envelope in envelopes:
            entry, size = self.encode(envelope)
            if size > limit:
                self.check_size(topic, envelope, size)
            entries.append(entry)
        self.broker.append_to_group(topic, group, entries)

    async def publish_raw(self, topic: str, message: RawMessage) -> None:
        """Store ``message``'s payload as the body of a message with its headers (a
        foreign producer's, kept as bytes): it decodes only if it is a CloudEvent (binary-mode
        ``ce_`` headers, or a structured one: in structured mode, or with a
        ``content-type`` of ``application/cloudevents+json``)."""
        self.broker.check_reachable(self.url)
        await self.broker.wait_answer(self.url, HALF_OPEN_BOUND)
        payload, headers = message.payload, message.headers
        if headers and self.settings.mode == "structured":
            raise UnsupportedOperationError(
                f"memory broker {self.broker.name!r} runs in structured mode (no headers); "
                "publish the raw payload without headers"
            )
        stored = tuple((name, bytes(value)) for name, value in (headers or {}).items())
        self.broker.append(
            topic, (message.key, payload, stored or None, None, self.settings.mode == "structured")
        )

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        self.broker.check_reachable(self.url)
        await self.broker.wait_answer(self.url, HALF_OPEN_BOUND)
        group = self.broker.group(topic, options)
        subscription = MemorySubscription(
            self.broker, topic, group, options, self.settings.hold_keys
        )
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
        entries = stored.log if limit is None else islice(stored.log, max(0, limit))
        return [_read_record(topic, entry) for entry in entries]


def _read_record(topic: str, entry: Entry) -> ReadRecord:
    """What a reader sees of one stored entry: decoded from its bytes, as a delivery is."""
    envelope, error = decode_entry(entry)
    if envelope is None:
        return ReadRecord(topic, str(entry[OFFSET]), None, entry[BODY], error)
    return ReadRecord(topic, str(entry[OFFSET]), envelope)
