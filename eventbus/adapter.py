"""The adapter contract: what every broker adapter implements.

An adapter moves :class:`~eventbus.envelope.Envelope` objects; it knows nothing
of event classes, handlers or middleware. The bus and the conformance suite in
:mod:`eventbus.testing` rely on exactly this interface, so a third-party
adapter that implements it and passes the suite works with everything else.

(Over 400 lines on purpose: this module is the whole contract an adapter author
reads, documented in place; its toolkit is :mod:`eventbus.adapters_util`.)
"""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal, NamedTuple

# The names an adapter needs of dead letters and their replay, importable from here.
from eventbus.adapter_names import REPLAY_GROUP as REPLAY_GROUP
from eventbus.adapter_names import broker_dedupe_id as broker_dedupe_id
from eventbus.adapter_names import dlq_topic as dlq_topic
from eventbus.envelope import Envelope
from eventbus.errors import DeliveryAlreadySettledError
from eventbus.raw_message import RawMessage as RawMessage
from eventbus.raw_message import accept_old_form

Ordering = Literal["none", "per_key"]
StartFrom = Literal["earliest", "latest"]
Guarantee = Literal["at_most_once", "at_least_once"]
"""A delivery guarantee: ``at_least_once`` needs a broker that redelivers
(``Capabilities.redelivery``)."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a broker really offers, stated honestly; the conformance suite gates on it.

    - ``persistent``: published messages survive a consumer being away.
    - ``consumer_groups``: competing consumers within a group, fan-out across groups.
    - ``fanout``: every group receives every message of a topic.
    - ``ordering``: ``"per_key"`` keeps the order of messages sharing a partition key.
    - ``redelivery``: a nacked or unacknowledged message comes back.
    - ``native_delay``: ``nack(delay)`` is honoured by the broker, not by sleeping.
    - ``native_dead_letter``: ``reject()`` moves the message to a broker dead-letter queue.
    - ``replay``: a new group can start from the earliest retained message.
    - ``headers``: attributes travel as headers (CloudEvents binary mode).
    - ``max_message_bytes``: the largest message the adapter accepts.
    - ``dedupe_window``: seconds within which the broker drops duplicate ids, or ``None``.
    - ``reconnect``: the adapter recovers by itself after its connection drops.
    - ``lease``: the broker takes an unsettled delivery back after a lease (a poll
      interval, visibility timeout, ack wait or claim time) unless the consumer keeps it
      alive, and the adapter keeps it alive while the handler runs. False when there is
      no lease, or one no client can extend (RabbitMQ's ``consumer_timeout``: the
      adapter's page states the limit).
    - ``half_open_bound``: seconds within which the adapter notices a connection that
      stopped answering without closing (its ping interval plus the ping's deadline),
      reports it in ``health()`` and reconnects; ``None`` when it cannot tell.
    - ``browse``: :meth:`Adapter.read` lists a topic's messages without consuming them
      (``eventbus dlq`` browses; without it, it reads the DLQ as a consumer group).
    - ``group_route``: :meth:`Adapter.publish_to_group` delivers to one group of a
      topic (a dead letter is replayed to the group that failed it; without it, to the
      whole topic).
    - ``raw_publish``: :meth:`Adapter.publish_raw` puts arbitrary bytes on a topic (an
      undecodable dead letter is replayed as it arrived); with transport headers too
      when ``headers`` is true.

    The last three default to false: a third-party adapter claims them by declaring
    them (and the conformance cases that need them then run on it).

    Rather than restating all seventeen, an adapter may start from one of the two
    documented sets below, :attr:`DURABLE` or :attr:`EPHEMERAL`, and
    declare only where its broker differs, each with its reason::

        self.capabilities = replace(
            Capabilities.DURABLE,
            max_message_bytes=settings.max_message_bytes,
            half_open_bound=settings.half_open_bound,
            native_delay=False,  # the client waits out a delay, not the broker
        )
    """

    persistent: bool
    consumer_groups: bool
    fanout: bool
    ordering: Ordering
    redelivery: bool
    native_delay: bool
    native_dead_letter: bool
    replay: bool
    headers: bool
    max_message_bytes: int
    dedupe_window: float | None = None
    reconnect: bool = True
    lease: bool = False
    half_open_bound: float | None = None
    browse: bool = False
    group_route: bool = False
    raw_publish: bool = False

    DURABLE: ClassVar[Capabilities]
    """The claims of a broker that keeps messages for its consumer groups: persistent,
    grouped, fanned out to every group, in order per key, redelivered with a native delay,
    replayable from the earliest, with headers, reconnecting, leased (an unsettled delivery
    comes back after a lease the adapter keeps alive), browsable, routable to one group and
    taking raw bytes; no broker dead-letter queue, no duplicate window, 1 MiB, no half-open
    bound. A starting point, not a promise: an adapter built on it declares each difference
    (``dataclasses.replace``), and the conformance suite tests every claim it keeps."""

    EPHEMERAL: ClassVar[Capabilities]
    """The claims of a broker that stores nothing (a message reaches whoever listens when
    it is sent): as :attr:`DURABLE` but not persistent, no order, no redelivery nor
    delay, no replay, no lease, no per-group route; the rest (groups, headers, browse, raw
    bytes, reconnecting) as there, which an adapter declares where it differs."""


Capabilities.DURABLE = Capabilities(
    persistent=True,
    consumer_groups=True,
    fanout=True,
    ordering="per_key",
    redelivery=True,
    native_delay=True,
    native_dead_letter=False,
    replay=True,
    headers=True,
    max_message_bytes=1024 * 1024,
    dedupe_window=None,
    reconnect=True,
    lease=True,
    half_open_bound=None,
    browse=True,
    group_route=True,
    raw_publish=True,
)

Capabilities.EPHEMERAL = replace(
    Capabilities.DURABLE,
    persistent=False,
    ordering="none",
    redelivery=False,
    native_delay=False,
    replay=False,
    lease=False,
    group_route=False,
)


@dataclass(frozen=True, slots=True)
class SubscribeOptions:
    """How a subscription consumes a topic.

    ``prefetch`` bounds the deliveries handed out and not yet settled; adapters
    never give a subscription more than that at once. ``delivery`` is the
    guarantee the subscription asked for explicitly, ``None`` when it takes the
    broker's strongest (the bus has already refused one the broker cannot give,
    see :meth:`Adapter.refusal`).
    """

    group: str
    prefetch: int = 16
    start_from: StartFrom = "latest"
    delivery: Guarantee | None = None


def start_from_for(asked: StartFrom | None, adapter: Adapter) -> StartFrom:
    """Where a new group starts: the one rule, applied by the core for every adapter.

    The subscription's explicit ``start_from`` wins; else the adapter's URL sets the
    default (:attr:`Adapter.start_from`); else ``"latest"``. The adapter receives the
    result in :class:`SubscribeOptions` and never applies its URL's value itself, so a
    refusal of ``"earliest"`` by a broker without ``replay`` (SQS) holds whichever
    side asked.
    """
    return asked or adapter.start_from or "latest"


class Decoded(NamedTuple):
    """What an adapter's codec read from one message: the envelope (or why not) and the
    transport facts, for :class:`Delivery` (one is built per message, hence a tuple).

    ``error`` says why ``envelope`` is ``None``; ``raw`` and ``raw_headers`` are the
    body and the transport metadata as they arrived (the dead letter of an undecodable
    message keeps them); ``attempt`` is the delivery count the message carries (1 when
    it carries none); ``not_before_ms`` (epoch ms, 0 for none) and ``origin_topic``
    are what a retry copy says of its delay and its first topic.
    """

    envelope: Envelope | None
    error: str | None = None
    raw: bytes | None = None
    raw_headers: Mapping[str, bytes] | None = None
    attempt: int = 1
    not_before_ms: int = 0
    origin_topic: str | None = None


class Delivery(abc.ABC):
    """One message handed to a subscriber, with the transport facts beside it.

    ``envelope`` is ``None`` when the bytes could not be decoded; ``raw`` and
    ``decode_error`` then say what arrived and why it is unreadable, and
    ``raw_headers`` carries the message's transport metadata as the broker gave it
    (headers, stream fields, properties), so its dead letter keeps them.
    ``ack``, ``nack`` and ``reject`` are idempotent and mutually exclusive:
    repeating the same one is a no-op, mixing them raises.

    An adapter builds one from its codec's :class:`Decoded`::

        super().__init__(decoded, topic=topic, group=group, message_id=position)

    which keeps ``raw`` and ``raw_headers`` only for a message that did not decode and
    takes ``attempt`` from it unless given. The keyword form (``envelope=``,
    ``raw=``...) without a ``Decoded`` still works.
    """

    __slots__ = (
        "_settled",
        "attempt",
        "decode_error",
        "envelope",
        "group",
        "message_id",
        "raw",
        "raw_headers",
        "received_at",
        "topic",
    )

    stable_id: ClassVar[bool] = False
    """True when ``message_id`` names the same message on every redelivery (an offset,
    a stream entry id, a broker-assigned id), so a message that is not a CloudEvent can
    be given an event id derived from it (:class:`eventbus.wire.Plain`)."""

    def __init__(
        self,
        decoded: Decoded | None = None,
        /,
        *,
        topic: str,
        group: str,
        envelope: Envelope | None = None,
        attempt: int | None = None,
        message_id: str = "",
        raw: bytes | None = None,
        decode_error: str | None = None,
        raw_headers: Mapping[str, bytes] | None = None,
    ) -> None:
        self.topic = topic
        self.group = group
        self.message_id = message_id
        if decoded is None:
            self.envelope = envelope
            self.attempt = attempt or 1
            self.raw = raw
            self.decode_error = decode_error
            self.raw_headers = raw_headers
        else:
            self.envelope = envelope = decoded.envelope
            self.attempt = attempt or decoded.attempt
            self.decode_error = decoded.error
            # Kept only for bytes that are no event: what their dead letter carries.
            self.raw = decoded.raw if envelope is None else None
            self.raw_headers = decoded.raw_headers if envelope is None else None
        self.received_at = time.time()
        self._settled: str | None = None

    @property
    def stale(self) -> bool:
        """True when the adapter no longer owns this message (its partition was revoked).

        The bus checks it right before running a queued delivery and drops a stale one
        unrun: the broker hands it to its new owner. Adapters without such a notion
        leave it ``False``.
        """
        return False

    def given_back_unread(self) -> None:
        """The bus never got this delivery: a layer between the adapter's subscription
        and the bus (:class:`~eventbus.group_route.WithGroupRoute`) still held it when the
        subscription closed, and the subscription gives it back. An adapter whose
        ``attempt`` comes from the broker's delivery count records it as given back
        unread (:mod:`eventbus.given_back`), so it spends none of the crash-loop budget;
        the default does nothing (nothing counted it)."""
        return None

    @property
    def settled(self) -> str | None:
        """``"ack"``, ``"nack"``, ``"reject"`` or ``None`` while unsettled."""
        return self._settled

    def _settle(self, how: str) -> bool:
        if self._settled == how:
            return False
        if self._settled is not None:
            raise DeliveryAlreadySettledError(
                f"delivery {self.message_id or '?'} on topic {self.topic!r} group "
                f"{self.group!r} was already {self._settled}ed; it cannot also be {how}ed"
            )
        self._settled = how
        return True

    async def ack(self) -> None:
        """Tell the broker the message is done; it will not come back.

        If the broker call fails the delivery stays unsettled (it may then be
        nacked), so a failed settle is never recorded as done.
        """
        if self._settle("ack"):
            await self._settle_with(self._ack())

    async def nack(self, delay: float = 0.0) -> None:
        """Ask for redelivery after ``delay`` seconds (native where the broker can)."""
        if self._settle("nack"):
            await self._settle_with(self._nack(max(0.0, delay)))

    async def reject(self) -> None:
        """Give up on the message: the broker's dead-letter queue if it has one, else drop."""
        if self._settle("reject"):
            await self._settle_with(self._reject())

    async def _settle_with(self, call: Awaitable[None]) -> None:
        # The state is taken before the call so a concurrent settle sees it, and
        # given back if the broker did not confirm.
        try:
            await call
        except BaseException:
            self._settled = None
            raise

    @abc.abstractmethod
    async def _ack(self) -> None: ...

    @abc.abstractmethod
    async def _nack(self, delay: float) -> None: ...

    @abc.abstractmethod
    async def _reject(self) -> None: ...


class Subscription(abc.ABC):
    """An open subscription: iterate it for deliveries, close it to stop fetching.

    Iteration raises :class:`~eventbus.errors.ConnectionLostError` when the
    connection drops and the adapter cannot recover by itself; the bus then
    subscribes again.
    """

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[Delivery]: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop fetching. Unsettled deliveries go back to the broker for redelivery."""

    async def backlog(self) -> int | None:
        """How many messages the broker holds for this group that could be delivered
        now (not in flight, not delayed), or ``None`` when the adapter cannot tell.

        The bus asks only when the subscription has received nothing for a while
        (``EventBus(stall_after=...)``): a group with a backlog and an idle consumer
        is *stalled*, which ``bus.health()`` reports and the runner answers by
        subscribing again. Ask the broker (consumer info, queue depth, lag); raise
        :class:`~eventbus.errors.BrokerConnectionError` when it does not answer, and
        :class:`~eventbus.errors.TopicNotFoundError` when the group's resources are
        gone. Each adapter documents what it counts.
        """
        return None


@dataclass(frozen=True, slots=True)
class ReadRecord:
    """One message as :meth:`Adapter.read` found it on a topic, without consuming it.

    ``message_id`` is the message's stable position on the broker (the memory
    offset, Kafka's ``topic/partition/offset``); ``envelope`` is ``None`` when the
    bytes are not a CloudEvent, and ``raw`` and ``decode_error`` then say why.
    """

    topic: str
    message_id: str
    envelope: Envelope | None
    raw: bytes | None = None
    decode_error: str | None = None


@dataclass(slots=True)
class HealthReport:
    """Result of :meth:`Adapter.health`."""

    ok: bool
    detail: str = ""
    info: dict[str, str] = field(default_factory=dict)


class Adapter(abc.ABC):
    """Base class of every broker adapter.

    Subclasses set ``schemes`` and ``capabilities`` and implement the abstract
    methods. ``publish`` returns only once the broker has confirmed every message;
    when only some of a batch were confirmed it raises
    :class:`~eventbus.errors.BatchPublishError` naming the failed indexes.
    A message larger than ``capabilities.max_message_bytes`` raises
    :class:`~eventbus.errors.MessageTooLargeError` before anything is sent.
    """

    schemes: ClassVar[tuple[str, ...]] = ()
    capabilities: Capabilities
    stronger: ClassVar[str] = ""
    """What to use instead when a subscription asks for a guarantee this broker
    lacks (``"nats:// (JetStream)"`` for core NATS); quoted by the bus's refusal."""
    start_from: StartFrom | None = None
    """Where a new group starts when its subscription does not say: the URL's
    ``start_from`` option (every adapter accepts it), ``None`` when the URL gives none.
    The core applies it (:func:`start_from_for`); an adapter only sets it."""

    def __init__(self, url: str) -> None:
        self.url = url

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open connections; fail fast with BrokerConnectionError naming the masked URL."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush pending publishes, close subscriptions and connections."""

    @abc.abstractmethod
    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        """Publish ``envelopes`` to ``topic`` and wait for the broker's confirmation."""

    @abc.abstractmethod
    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        """Start consuming ``topic`` as ``options.group``; the group is created if new."""

    @abc.abstractmethod
    async def health(self) -> HealthReport:
        """Whether the broker answers now, and if not why (never raises).

        Abstract on purpose: a default "ok" would let an adapter pass the health
        case without ever looking at its connection.
        """

    def refusal(self, guarantee: Guarantee) -> str | None:
        """Why this broker cannot give ``guarantee``, or ``None`` when it can.

        The bus asks at ``subscribe()`` for an explicitly requested guarantee and
        raises :class:`~eventbus.errors.GuaranteeUnavailableError` with the reason
        and :attr:`stronger`. The default reads the capabilities: at-least-once
        needs ``redelivery``.
        """
        if guarantee == "at_least_once" and not self.capabilities.redelivery:
            return (
                "the broker never redelivers a message (capabilities.redelivery="
                "False): one whose handler fails, or that is in flight when the "
                "process stops, is gone"
            )
        return None

    async def read(self, topic: str, *, limit: int | None = None) -> list[ReadRecord]:
        """Browse ``topic``: its retained messages, oldest first, without consuming them.

        Reads from the earliest retained message up to the end of the topic as it
        was when the call started (then returns at once, no idle wait), at most
        ``limit`` messages. Browsing leaves no trace on the broker: it joins no
        consumer group, commits nothing and creates nothing; a topic that does not
        exist raises :class:`~eventbus.errors.TopicNotFoundError` rather than being
        created. Brokers that cannot read without consuming (plain queues) leave
        this raising :class:`~eventbus.errors.UnsupportedOperationError`.
        """
        from eventbus.errors import UnsupportedOperationError

        raise UnsupportedOperationError(
            f"{type(self).__name__} cannot browse topic {topic!r} without consuming it"
        )

    async def publish_to_group(self, topic: str, group: str, envelopes: Sequence[Envelope]) -> None:
        """Deliver ``envelopes`` on ``topic`` to consumer group ``group`` only.

        The other groups of the topic never see them: this is how a dead letter is
        replayed to the group that failed it without re-running every other group's
        handlers. Same confirmation and size rules as :meth:`publish`. Brokers with
        no per-group route leave this raising
        :class:`~eventbus.errors.UnsupportedOperationError`; replay then falls back
        to the whole topic.
        """
        from eventbus.errors import UnsupportedOperationError

        raise UnsupportedOperationError(
            f"{type(self).__name__} cannot deliver to one group of topic {topic!r}"
        )

    async def publish_raw(self, topic: str, message: RawMessage) -> None:
        """Put ``message``'s bytes on ``topic`` with its transport headers, bypassing the
        codec.

        This is how a message of a producer that does not speak CloudEvents looks,
        and how ``eventbus dlq replay`` puts an undecodable dead letter back as it
        arrived. ``message.headers`` become the broker's own headers (Kafka record headers,
        AMQP properties, NATS headers, Streams fields, SQS message attributes); an
        adapter whose broker has none raises
        :class:`~eventbus.errors.UnsupportedOperationError` when headers are given.
        Adapters that can't publish raw bytes at all leave this raising, so the
        conformance cases that need it are skipped with the reason.

        ``message.key`` is the partition key, as an envelope's ``partitionkey`` is for
        :meth:`publish` (Kafka's record key, a FIFO queue's message group, the memory
        and SQL brokers' key); brokers that order a whole topic (NATS, RabbitMQ, Redis)
        take it and need nothing of it. A plain publish (:mod:`eventbus.wire`) goes out
        this way. The old form, ``publish_raw(topic, payload, headers, key=key)``, works
        for one release with a DeprecationWarning (:mod:`eventbus.raw_message`).
        """
        from eventbus.errors import UnsupportedOperationError

        raise UnsupportedOperationError(f"{type(self).__name__} cannot publish raw bytes")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("publish_raw")
        if own is not None and not hasattr(own, "__accepts_old_form__"):
            cls.publish_raw = accept_old_form(cls, own)  # type: ignore[method-assign, assignment]

    def check_size(self, topic: str, envelope: Envelope, size: int) -> None:
        """Raise MessageTooLargeError if ``size`` bytes exceed the broker maximum."""
        from eventbus.errors import MessageTooLargeError

        limit = self.capabilities.max_message_bytes
        if size > limit:
            raise MessageTooLargeError(
                f"event {envelope.id} ({envelope.type}) is {size} bytes, over the "
                f"{limit}-byte limit of {type(self).__name__} on topic {topic!r}; nothing "
                "was sent. Keep events small: reference large data by id or URL."
            )


# The base's own publish_raw takes the old call form too (one release), so an adapter
# that cannot publish raw bytes answers an old-form call with UnsupportedOperationError,
# as it answers the new form, not with a TypeError about its arguments.
Adapter.publish_raw = accept_old_form(Adapter, Adapter.publish_raw)  # type: ignore[method-assign, assignment]
