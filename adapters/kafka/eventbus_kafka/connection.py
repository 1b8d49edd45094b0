"""The Kafka adapter's connection: the producer (started once, idempotent where the broker
has it) and what counts as a connection failure rather than a refusal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RequestTimedOutError,
    UnknownProducerId,
)

from eventbus.adapters_util import ExceptionMap, open_once, translate
from eventbus.errors import BrokerConnectionError

from .settings import KafkaSettings

log = logging.getLogger("eventbus.kafka")

_CONNECTION_ERRORS = (
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
    TimeoutError,
    OSError,
)


# Whatever fails while connecting: the broker is not there, or not for these credentials.
_UNREACHABLE: ExceptionMap = {
    Exception: (
        BrokerConnectionError,
        "check that the bootstrap servers are reachable and the credentials are right",
    )
}


# The broker refuses the idempotent producer's state: its sequence numbers (a batch that
# took numbers never reached the log: it expired, or was refused, after it was sent, as
# a broker restart under load makes happen; aiokafka numbers on past the gap, so every
# later batch to that partition is refused the same way, for good), or its producer id
# or epoch (forgotten or fenced by the broker). A new producer (a new id, numbered from
# 0) is the cure: ProducerConnection.drop_producer.
_PRODUCER_STATE_ERRORS = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
)


def producer_state_lost(exc: BaseException) -> bool:
    """Whether the broker refused the producer itself (see ``_PRODUCER_STATE_ERRORS``)."""
    return isinstance(exc, _PRODUCER_STATE_ERRORS)


def transient(exc: BaseException) -> bool:
    """A failure that goes away by itself: no connection, or an error Kafka marks
    retriable (a leader moving, a topic being deleted or created: NotLeaderForPartition,
    UnknownTopicOrPartition), which aiokafka gave up retrying, or a producer the broker
    no longer accepts (replaced by a new one: ``ProducerConnection.drop_producer``).
    Publishing again is the answer, so it is a BrokerConnectionError, never a
    permanent refusal."""
    return (
        isinstance(exc, _CONNECTION_ERRORS)
        or (isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False)))
        or producer_state_lost(exc)
    )


def half_open_bound(settings: KafkaSettings) -> float:
    """Seconds within which a connection that stopped answering without closing is noticed.

    ``health()`` asks the cluster for its metadata with a ``connect_timeout`` deadline,
    so it reports such a connection within that; aiokafka gives every request
    ``request_timeout`` and then closes the connection and opens a new one, and a
    consumer always has a fetch (or a heartbeat) in flight, so it reconnects within that.
    """
    return max(settings.connect_timeout, settings.request_timeout)


class ProducerConnection:
    """The producer half of a ``KafkaAdapter``."""

    settings: KafkaSettings
    idempotent: bool | None
    _producer: AIOKafkaProducer | None
    _own_producer: bool
    _connect_lock: asyncio.Lock
    _retired: set[asyncio.Task[None]]  # producers dropped, stopping in the background

    def client_options(self) -> dict[str, Any]:
        raise NotImplementedError

    async def _ready_producer(self) -> AIOKafkaProducer:
        return await open_once(self._connect_lock, lambda: self._producer, self._open_producer)

    def drop_producer(self, broken: AIOKafkaProducer, exc: BaseException) -> None:
        """Forget ``broken``, whose state the broker refused (:func:`producer_state_lost`):
        the next publish opens a new producer, so the bus's publish retry goes out
        through it. The old one stops in the background: its pending batches fail as
        this one did, and their publishes are retried the same way. A producer given to
        the adapter is its owner's: only logged."""
        if self._producer is not broken:
            return  # dropped already: another publish saw the same refusal
        if not self._own_producer:
            log.error(
                "Kafka at %s refused the producer given to the adapter (%s: %s); every "
                "later publish through it may be refused the same way: replace it",
                self.settings.masked_url,
                type(exc).__name__,
                exc,
            )
            return
        self._producer = None
        log.warning(
            "Kafka at %s refused the producer's state (%s: %s: a batch that took sequence "
            "numbers never reached the log, or the broker forgot the producer id); "
            "opening a new producer, and the refused publishes go out through it",
            self.settings.masked_url,
            type(exc).__name__,
            exc,
        )
        task = asyncio.get_running_loop().create_task(self._stop_dropped(broken))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _stop_dropped(self, producer: AIOKafkaProducer) -> None:
        try:
            await producer.stop()
        except Exception as exc:  # its batches failed already; nothing else to tell
            log.info("stopping a dropped Kafka producer: %s: %s", type(exc).__name__, exc)

    async def _open_producer(self) -> AIOKafkaProducer:
        s = self.settings
        idempotent = s.enable_idempotence != "false"
        try:
            producer = await self._start_producer(idempotent)
        except KafkaError as exc:
            if isinstance(exc, _CONNECTION_ERRORS) or s.enable_idempotence == "false":
                raise self._connect_error(exc) from exc
            if s.enable_idempotence == "true":
                raise BrokerConnectionError(
                    f"Kafka at {s.masked_url} refused the idempotent producer "
                    f"(InitProducerId: {type(exc).__name__}: {exc}); this broker lacks "
                    "it: use enable_idempotence=auto (falls back with a warning) or false"
                ) from exc
            # The broker answered but refused InitProducerId: a Kafka-protocol
            # broker without the idempotent producer (Tansu, for one).
            log.warning(
                "Kafka at %s has no idempotent producer (%s: %s); publishing without "
                "it, so a produce request retried after a lost reply may write a "
                "record twice. Set enable_idempotence=false to silence this.",
                s.masked_url,
                type(exc).__name__,
                exc,
            )
            idempotent = False
            try:
                producer = await self._start_producer(idempotent)
            except Exception as again:
                raise self._connect_error(again) from again
        except Exception as exc:
            raise self._connect_error(exc) from exc
        self.idempotent = idempotent
        self._producer = producer
        return producer

    async def _start_producer(self, idempotent: bool) -> AIOKafkaProducer:
        s = self.settings
        producer = AIOKafkaProducer(
            **self.client_options(),
            acks="all",
            enable_idempotence=idempotent,
            linger_ms=s.ms(s.linger),
            compression_type=s.compression_type,
            max_batch_size=s.batch_bytes,
            max_request_size=max(1024 * 1024, s.max_message_bytes + 64 * 1024),
        )
        try:
            # With idempotence, start() also obtains the producer id (InitProducerId),
            # so a broker without it is found here, not mid-publish.
            await asyncio.wait_for(producer.start(), s.connect_timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return producer

    def _connect_error(self, exc: Exception) -> Exception:
        s = self.settings
        return translate(
            exc,
            _UNREACHABLE,
            what=(f"connecting to Kafka at {s.masked_url} (within {s.connect_timeout:g}s)"),
        )
