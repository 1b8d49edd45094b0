"""The Kafka adapter's connection: the producer (started once, idempotent where the broker
has it) and what counts as a connection failure rather than a refusal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
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


def transient(exc: BaseException) -> bool:
    """A failure that goes away by itself: no connection, or an error Kafka marks
    retriable (a leader moving, a topic being deleted or created: NotLeaderForPartition,
    UnknownTopicOrPartition), which aiokafka gave up retrying. Publishing again is
    the answer, so it is a BrokerConnectionError, never a permanent refusal."""
    return isinstance(exc, _CONNECTION_ERRORS) or (
        isinstance(exc, KafkaError) and bool(getattr(exc, "retriable", False))
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
    _connect_lock: asyncio.Lock

    def client_options(self) -> dict[str, Any]:
        raise NotImplementedError

    async def _ready_producer(self) -> AIOKafkaProducer:
        return await open_once(self._connect_lock, lambda: self._producer, self._open_producer)

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
