"""The Kafka adapter: aiokafka producer and consumers behind the eventbus contract.

Example::

    adapter = KafkaAdapter("kafka://localhost:9092?partitions=6")
    await adapter.connect()
    await adapter.publish("orders", [envelope])

    # Or with settings made in code and a producer of your own (started by you, used
    # as it is, never stopped by the adapter):
    adapter = KafkaAdapter(settings=KafkaSettings(bootstrap_servers=("k1:9092",)),
                           client=producer)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError, UnknownTopicOrPartitionError
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from eventbus.adapter import Capabilities, HealthReport, ReadRecord, SubscribeOptions, Subscription
from eventbus.adapters_util import (
    ConfiguredAdapter,
    Mapped,
    error_class,
    map_exceptions,
    tls_context,
    translate,
)
from eventbus.envelope import Envelope
from eventbus.errors import (
    BatchPublishError,
    BrokerConnectionError,
    MessageTooLargeError,
    PublishError,
    TopicNotFoundError,
)
from eventbus.raw_message import RawMessage

from .browse import read_topic
from .codec import Headers, encode_parts, record_size, retry_headers
from .connection import ProducerConnection, half_open_bound, producer_state_lost, transient
from .consumer import KafkaSubscription
from .delivery import best_effort
from .provision import TopicProvisioner, retry_topic, retry_topics
from .publish import BATCH_MIN, Locks, send_batched, send_each
from .settings import KafkaSettings

log = logging.getLogger("eventbus.kafka")


class KafkaAdapter(ProducerConnection, ConfiguredAdapter[KafkaSettings, AIOKafkaProducer]):
    """Kafka through aiokafka: ``kafka://host:port[,host:port][?options]``.

    ``KafkaAdapter(url)``, or ``KafkaAdapter(settings=..., client=...)``: settings made
    in code, and optionally a producer you configured and started yourself, used as it
    is (its options win over the settings' producer options) and never stopped by the
    adapter. Consumers and the admin client always come from the settings' connection
    options. See ``docs/adapters/kafka.md`` for every option and the delivery guarantees.
    """

    schemes = ("kafka",)
    settings_type = KafkaSettings

    def _setup(self, client: AIOKafkaProducer | None) -> None:
        # A durable broker (per-key order by partition; lease: a member that does not
        # poll for max_poll_interval leaves its group and its partitions, unsettled
        # records and all, go to another member; the subscription keeps polling while
        # handlers run, eventbus_kafka.keepalive), except:
        self.capabilities = replace(
            Capabilities.DURABLE,
            max_message_bytes=self.settings.max_message_bytes,
            half_open_bound=half_open_bound(self.settings),
            # nack(delay) goes through a retry topic, but the waiting is done by the
            # client (pause + timer), not by the broker: not native.
            native_delay=False,
        )
        self._producer: AIOKafkaProducer | None = client
        self._own_producer = client is None
        # A producer given to the adapter is not replaced: its state refused is for good.
        self._classify = _classify if client is None else _classify_given
        self._retired: set[asyncio.Task[None]] = set()
        self._structured = self.settings.mode == "structured"
        # publish() calls between queueing their records and their acks: a lone one
        # does not wait for linger (see publish.send_now).
        self._publishing = 0
        self._partition_locks: Locks = {}
        self._provisioner = TopicProvisioner(self.settings, self.client_options())
        self._subscriptions: set[KafkaSubscription] = set()
        self._connect_lock = asyncio.Lock()
        # Static-membership indexes in use, per (group, topic).
        self._instance_ids: dict[tuple[str, str], set[int]] = {}
        # Whether the running producer is idempotent (known once connected).
        self.idempotent: bool | None = None
        # Topics deleted underneath a subscription: whatever their new incarnation holds
        # was published after the deletion, so a group reads it from its first record.
        self.recreated: set[str] = set()
        # Whether the broker keeps offset commit metadata, where runs across crashes are
        # counted (eventbus_kafka.runs); None until the first count was read back.
        self.keeps_commit_metadata: bool | None = None

    def client_options(self) -> dict[str, Any]:
        """Options shared by the producer, the consumers and the admin client."""
        s = self.settings
        options: dict[str, Any] = {
            "bootstrap_servers": list(s.bootstrap_servers),
            "client_id": s.client_name,
            "request_timeout_ms": s.ms(s.request_timeout),
            "metadata_max_age_ms": s.ms(s.metadata_max_age),
            "security_protocol": s.security_protocol,
        }
        if s.tls:
            options["ssl_context"] = tls_context(s.tls_ca, s.tls_cert, s.tls_key, s.tls_verify)
        if s.security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = s.sasl_mechanism or "PLAIN"
            options["sasl_plain_username"] = s.sasl_username
            options["sasl_plain_password"] = s.sasl_password
        return options

    # -- connection --------------------------------------------------------------------

    async def connect(self) -> None:
        """Start the producer; fail within ``connect_timeout`` if no broker answers."""
        await self._ready_producer()

    async def close(self) -> None:
        """Close every subscription (committing what is done), flush and stop the producer.

        Always reaches the end, even with the broker unreachable: a failing step is
        logged and the next one runs; a cancellation of the caller is re-raised once
        everything was tried.
        """
        subscriptions = list(self._subscriptions)
        self._subscriptions.clear()
        try:
            closes = await asyncio.gather(
                *(best_effort("closing a subscription", s.close()) for s in subscriptions),
                return_exceptions=True,
            )
        except asyncio.CancelledError:  # the children finished their steps anyway
            closes = [True]
        cancelled = any(c is True or isinstance(c, BaseException) for c in closes)
        producer = self._producer
        if self._own_producer:
            self._producer = None
        if producer is not None:
            # stop() flushes pending batches first; a producer given to us is its
            # owner's to stop, flushed only.
            step = producer.stop() if self._own_producer else producer.flush()
            cancelled |= await best_effort("stopping the Kafka producer", step)
        cancelled |= await best_effort("closing the admin client", self._provisioner.close())
        if self._retired:  # producers dropped (drop_producer), still stopping
            retired = asyncio.gather(*self._retired, return_exceptions=True)
            cancelled |= await best_effort("stopping dropped Kafka producers", retired)
        if cancelled:
            raise asyncio.CancelledError

    async def health(self) -> HealthReport:
        """Ask the cluster for its metadata (one round trip)."""
        try:
            await self._ready_producer()
            topics = await asyncio.wait_for(
                self._provisioner.describe(), self.settings.connect_timeout
            )
        except Exception as exc:
            return HealthReport(ok=False, detail=f"{type(exc).__name__}: {exc}")
        return HealthReport(
            ok=True,
            detail=f"Kafka at {self.settings.masked_url} answered",
            info={
                "topics": str(len(topics)),
                "bootstrap": ",".join(self.settings.bootstrap_servers),
                "idempotent_producer": str(self.idempotent).lower(),
            },
        )

    # -- publishing --------------------------------------------------------------------

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        """Send every envelope and wait for acks=all (see :mod:`eventbus_kafka.publish`)."""
        structured = self._structured
        limit = self.capabilities.max_message_bytes
        records = []
        for envelope in envelopes:
            record = encode_parts(envelope, structured)
            if record[3] > limit:
                self.check_size(topic, envelope, record[3])
            records.append(record)
        if not records:
            return
        producer = await self._ready_producer()
        await self._provisioner.ensure([topic])
        self._publishing += 1
        try:
            if len(records) >= BATCH_MIN:
                failures = await send_batched(producer, topic, records, self._partition_locks)
            else:
                failures = await send_each(producer, topic, records, lambda: self._publishing == 1)
        finally:
            self._publishing -= 1
        if not failures:
            return
        for exc in failures.values():
            if producer_state_lost(exc):
                self.drop_producer(producer, exc)
                break
        if any(isinstance(exc, UnknownTopicOrPartitionError) for exc in failures.values()):
            self._provisioner.forget(topic)  # deleted underneath: the retry creates it
        if len(failures) == len(records) and all(self._worth_again(e) for e in failures.values()):
            first = next(iter(failures.values()))
            raise self._failure(topic, None, first, f"{len(records)} message(s)") from first
        errors = {i: self._failure(topic, envelopes[i], exc) for i, exc in failures.items()}
        raise BatchPublishError.partial(errors, len(records), f"Kafka topic {topic!r}")

    def _worth_again(self, exc: BaseException) -> bool:
        """Whether publishing again can succeed: what this adapter's classification
        calls a lost connection (one rule: :func:`_classify`, or :func:`_classify_given`
        for a producer given to the adapter, whose refused state is for good)."""
        if not isinstance(exc, Exception):
            return False  # a send cut short (cancelled): not confirmed, not retried here
        return error_class(self._classify(exc)) is BrokerConnectionError

    def _failure(
        self, topic: str, envelope: Envelope | None, exc: BaseException, what: str = ""
    ) -> Exception:
        """The eventbus error for a produce of ``envelope`` (or ``what``) that failed."""
        what = what or (f"event {envelope.id} ({envelope.type})" if envelope else "a record")
        what = f"publishing {what} to {topic!r} on Kafka at {self.settings.masked_url}"
        if not isinstance(exc, Exception):  # a send cut short (cancelled): not confirmed
            error = PublishError(f"{what} was not confirmed ({type(exc).__name__})")
            error.__cause__ = exc
            return error
        return translate(exc, self._classify, what=what)

    async def publish_raw(self, topic: str, message: RawMessage) -> None:
        """Send ``message``'s payload as one record with its headers as record headers
        and its key (UTF-8) as the record key, bypassing the codec: how a foreign
        producer's record looks, how a dead letter of one is replayed, and how a plain
        publish goes out."""
        key = message.key.encode() if message.key is not None else None
        headers = list((message.headers or {}).items())
        await self.send_record(topic, key, message.payload, headers)

    async def send_record(
        self, topic: str, key: bytes | None, value: bytes | None, headers: Headers
    ) -> None:
        """Send one record as it is and wait for the broker's acknowledgement.

        Size-checked like ``publish``: a retry record carries more headers than the
        original, so one that just fit may not fit any more.
        """
        size = record_size(key, value, headers)
        if size > self.settings.max_message_bytes:
            raise MessageTooLargeError(
                f"a record for {topic!r} is {size} bytes, over the "
                f"{self.settings.max_message_bytes}-byte limit; nothing was sent"
            )
        producer = await self._ready_producer()
        await self._provisioner.ensure([topic])
        with map_exceptions(
            self._classify,
            on_error=self._after_refusal(topic, producer),
            what=(f"a record to {topic!r} on Kafka at {self.settings.masked_url}"),
        ):
            await producer.send_and_wait(topic, value, key=key, headers=headers)

    def _after_refusal(self, topic: str, producer: AIOKafkaProducer) -> Callable[[Exception], None]:
        def forget(exc: Exception) -> None:
            if isinstance(exc, UnknownTopicOrPartitionError):
                self._provisioner.forget(topic)  # deleted underneath: the retry creates it
            elif producer_state_lost(exc):
                self.drop_producer(producer, exc)

        return forget

    # -- subscribing ---------------------------------------------------------------------

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        """Join ``options.group`` on ``topic`` and its retry topic.

        Returns once the group has assigned this member its partitions and their
        start offsets are fixed, so anything published afterwards is received.
        """
        await self._ready_producer()  # nack re-publishes through it
        await self._provisioner.ensure(
            [topic, *retry_topics(topic, options.group, self.settings.delay_tiers)]
        )
        subscription = KafkaSubscription(self, topic, options)
        s = self.settings
        join_timeout = max(30.0, 3 * (s.session_timeout + s.rebalance_timeout))
        await subscription.start(join_timeout)
        self._subscriptions.add(subscription)
        return subscription

    async def publish_to_group(self, topic: str, group: str, envelopes: Sequence[Envelope]) -> None:
        """Deliver ``envelopes`` to ``group`` alone, through that group's shortest
        retry topic (``<topic>.<group>.retry.<tier>s``), due at once: only the
        group's own consumers read it, so the topic's other groups never see them.
        Each starts again at attempt 1 (a dead letter replayed after a fix)."""
        structured = self.settings.mode == "structured"
        destination = retry_topic(topic, group, self.settings.delay_tiers[0])
        records = []
        for envelope in envelopes:
            key, value, headers, size = encode_parts(envelope, structured)
            if size > self.capabilities.max_message_bytes:
                self.check_size(topic, envelope, size)
            due = retry_headers(headers, attempt=1, not_before_ms=0, origin=topic)
            records.append((key, value, due))
        # The subscription provisions the topic and all its retry topics; make sure
        # they exist even when no consumer of the group runs right now.
        await self._provisioner.ensure(
            [topic, *retry_topics(topic, group, self.settings.delay_tiers)]
        )
        for key, value, headers in records:
            await self.send_record(destination, key, value, headers)

    # -- browsing -----------------------------------------------------------------------

    async def read(self, topic: str, *, limit: int | None = None) -> list[ReadRecord]:
        """Read ``topic`` from the earliest retained record to its end as of now.

        No consumer group, no commit, no topic creation: a missing topic raises
        :class:`~eventbus.errors.TopicNotFoundError`.
        """
        partitions = await self._provisioner.partitions(topic)
        if partitions is None:
            raise TopicNotFoundError(
                f"topic {topic!r} does not exist on Kafka at {self.settings.masked_url}: "
                "check the name (reading creates no topic)"
            )
        return await read_topic(self, topic, partitions, limit)

    async def topic_exists(self, topic: str) -> bool:
        """Whether the cluster has ``topic`` now (a metadata round trip; creates nothing)."""
        return await self._provisioner.partitions(topic) is not None

    async def topic_partitions(self, topic: str) -> list[int] | None:
        """The partitions of ``topic`` the cluster reports now, ``None`` if it is absent."""
        return await self._provisioner.partitions(topic)

    def topic_deleted(self, topic: str) -> None:
        """A subscription found ``topic`` deleted: create it again on the next use, and let
        a group whose committed offsets went with it read it from the start."""
        self._provisioner.forget(topic)
        self.recreated.add(topic)

    async def group_offsets(
        self, group: str, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """What the Kafka group ``group`` committed for ``partitions`` (admin request)."""
        return await self._provisioner.group_offsets(group, partitions)

    def instance_id(self, subscription: KafkaSubscription) -> str | None:
        """The static-membership id of a new subscription (None without ``group_instance_id``).

        Unique per Kafka group: the first subscription of a (group, topic) gets the
        configured id, further ones in this process ``<id>-2``, ``<id>-3``..., the
        lowest free, so a resubscription after a reconnect gets the same id back.
        """
        base = self.settings.group_instance_id
        if base is None:
            return None
        key = (subscription.options.group, subscription.topic)
        taken = self._instance_ids.setdefault(key, set())
        index = next(i for i in range(1, len(taken) + 2) if i not in taken)
        taken.add(index)
        subscription.instance_index = index
        return base if index == 1 else f"{base}-{index}"

    def forget(self, subscription: KafkaSubscription) -> None:
        """Called by a subscription when it closes."""
        self._subscriptions.discard(subscription)
        taken = self._instance_ids.get((subscription.options.group, subscription.topic))
        if taken is not None:
            taken.discard(subscription.instance_index)


def _classify(exc: Exception) -> Mapped:
    """What a failed produce means: too large (never sent), worth publishing again (no
    connection, a retriable Kafka error aiokafka gave up on), or refused for good."""
    if isinstance(exc, MessageSizeTooLargeError):
        return MessageTooLargeError, "the broker refused it; nothing was sent"
    if transient(exc):
        return BrokerConnectionError, "publish again once the broker answers"
    return PublishError, "the broker refused it"


def _classify_given(exc: Exception) -> Mapped:
    """:func:`_classify` for a producer given to the adapter (``client=``): the adapter
    cannot replace it, so a refusal of its state is for good, not worth publishing
    again through it."""
    if producer_state_lost(exc):
        return PublishError, (
            "the broker refused the producer given to the adapter (client=...), and "
            "refuses it again on every publish: replace it"
        )
    return _classify(exc)
