"""What a subscription watches on the broker: that its topic still exists, and its backlog.

A topic deleted underneath a running group (an operator, a cleanup script) takes the
group's committed offsets with it; the consumer's partitions simply disappear and,
unnoticed, the subscription would sit idle with ``health()`` ok, even after a
producer created the topic again. The watch looks at the consumer's metadata every
:data:`WATCH_INTERVAL` (no round trip); once the topic is missing there, or a commit
fails and a partition committed to is gone (some brokers, Tansu among them, create
the topic again at once and the consumer never sees it missing), the iteration
fails with :class:`~eventbus.errors.TopicNotFoundError`. The bus
subscribes again, which creates the topic anew if nobody did (unless
``provision=false``: then the subscription fails for good, visibly, with a
ProvisioningError) and reads
it from its first record, since everything in it was published after the deletion.

``backlog()`` is the number of records the broker holds for this member that could
be handed out now: on each assigned partition the log end (the last stable offset
under ``read_committed``) minus the consumer's position, plus records fetched and
waiting for a prefetch slot. On a retry topic only the records written more than
its tier ago count (due for sure; a shorter delay in a longer tier is counted once
the tier has passed), and a retry partition held until a record is due is left out
(what waits behind a record that is not due is not due either).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError

from eventbus.adapter import SubscribeOptions
from eventbus.adapters_util import map_exceptions
from eventbus.errors import BrokerConnectionError, TopicNotFoundError

from .offsets import Entry, PartitionLog

if TYPE_CHECKING:
    from .adapter import KafkaAdapter

log = logging.getLogger("eventbus.kafka")

WATCH_INTERVAL = 1.0


class TopicWatch:
    """The broker-watching half of a ``KafkaSubscription``."""

    adapter: KafkaAdapter
    topic: str
    options: SubscribeOptions
    consumer: AIOKafkaConsumer
    _closed: bool
    _wake: asyncio.Event
    _held: dict[TopicPartition, Any]
    _ready: deque[tuple[Any, PartitionLog, Entry, int | None]]
    _lost: Exception | None
    retry_tiers: dict[str, float]

    async def _watch_topic(self) -> None:
        """Fail the iteration once the topic was deleted on the broker.

        The consumer's metadata had the topic when it joined; once a refresh (aiokafka
        refreshes it on any fetch error) lacks it, the topic was deleted, and the group's
        offsets with it, even if a producer has created it again since (the consumer
        would not see that before ``metadata_max_age_ms``, five minutes by default).
        Two looks in a row, so a refresh caught in the middle of an election is not
        taken for a deletion.
        """
        missing = 0
        while not self._closed and self._lost is None:
            await asyncio.sleep(WATCH_INTERVAL)
            missing = missing + 1 if self.consumer.partitions_for_topic(self.topic) is None else 0
            if missing >= 2:  # the bus logs the error and subscribes again
                self._lost = self._deleted()
                self._wake.set()

    async def _check_partitions_exist(self, partitions: set[TopicPartition]) -> None:
        """After a failed commit: if a partition committed to is gone (its topic deleted,
        or created again with fewer partitions), fail the iteration as the watch does."""
        for topic in {tp.topic for tp in partitions}:
            try:
                now = await self.adapter.topic_partitions(topic)
            except BrokerConnectionError:
                return  # the cluster does not answer: an outage, reported elsewhere
            if now is None or any(
                tp.partition not in now for tp in partitions if tp.topic == topic
            ):
                self._lost = self._deleted(topic)
                self._wake.set()
                return

    def _deleted(self, topic: str | None = None) -> TopicNotFoundError:
        topic = topic or self.topic
        self.adapter.topic_deleted(topic)
        return TopicNotFoundError(
            f"topic {topic!r} was deleted on Kafka at {self.adapter.settings.masked_url} "
            f"while group {self.options.group!r} consumed it (its committed offsets went "
            "with it); subscribing again creates it anew and reads it from its first "
            "record (with provision=false, create it yourself)"
        )

    async def backlog(self) -> int | None:
        """Records the broker holds for this member that could be handed out now."""
        if self._lost is not None:
            raise self._lost
        owned = self.consumer.assignment()
        # No partition of the topic here: other members have them, or it is gone.
        if not any(tp.topic == self.topic for tp in owned) and (
            not await self.adapter.topic_exists(self.topic)
        ):
            raise self._deleted()
        ready = sum(1 for item in self._ready if not (item[1].revoked or item[1].suspended))
        assigned = [tp for tp in owned if tp not in self._held]
        if not assigned:
            return ready
        try:
            with map_exceptions(
                {(KafkaError, ConsumerStoppedError, TimeoutError): BrokerConnectionError},
                what=(
                    f"reading the log end offsets of {self.topic!r} for group "
                    f"{self.options.group!r} on Kafka at {self.adapter.settings.masked_url}"
                ),
            ):
                lag = await self._lag(assigned)
        except BrokerConnectionError as exc:
            if not await self.adapter.topic_exists(self.topic):
                raise self._deleted() from exc.__cause__
            raise
        return lag + ready

    async def _lag(self, assigned: list[TopicPartition]) -> int:
        """Log end minus position per partition; on a retry topic only up to the first
        record written less than its tier ago (what is before it is due for sure)."""
        timeout = self.adapter.settings.request_timeout
        ends = await asyncio.wait_for(self.consumer.end_offsets(assigned), timeout)
        now_ms = int(time.time() * 1000)
        cutoffs = {
            tp: now_ms - round(self.retry_tiers[tp.topic] * 1000)
            for tp in assigned
            if tp.topic in self.retry_tiers
        }
        due = {}
        if cutoffs:
            found = await asyncio.wait_for(self.consumer.offsets_for_times(cutoffs), timeout)
            due = {tp: ends[tp] if found.get(tp) is None else found[tp].offset for tp in cutoffs}
        lag = 0
        for tp in assigned:
            position = await asyncio.wait_for(self.consumer.position(tp), timeout)
            lag += max(0, int(due.get(tp, ends[tp])) - int(position))
        return lag
