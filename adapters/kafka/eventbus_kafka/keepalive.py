"""Polling that keeps a subscription in its group while its handlers run (#18 defect 25).

aiokafka makes a member leave its group when no ``getmany()`` has been in progress
for ``max_poll_interval`` (``fetcher_idle_time``: the time since the last call
*ended*, whatever it returned; see ``aiokafka.consumer.subscription_state``). The
subscription's iterator calls ``getmany()`` only while it is being iterated, and the
bus does not iterate while a handler runs: with ``concurrency=1`` it runs each
delivery inside its fetch loop, so the iterator sits at its ``yield`` for the whole
run, and with every prefetch slot busy it has nothing to ask for. A keeper task
therefore polls whenever no poll has ended for a tick: with every partition paused,
so the poll fetches nothing (aiokafka drops what it had buffered for a paused
partition and fetches it again after the resume) and costs no round trip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError

log = logging.getLogger("eventbus.kafka")

# The keeper's tick: at most a second, and a quarter of the poll interval, so a
# member never comes near max_poll_interval without a poll.
MAX_TICK = 1.0


def keeper_tick(max_poll_interval: float) -> float:
    """Seconds between the keeper's looks for ``max_poll_interval`` (seconds)."""
    return min(MAX_TICK, max_poll_interval / 4)


class PollKeeper:
    """The polling half of a ``KafkaSubscription``: every ``getmany`` goes through
    :meth:`_poll`, and :meth:`_keep_membership` polls when nobody else does."""

    consumer: AIOKafkaConsumer
    topic: str
    _closed: bool
    _held: dict[TopicPartition, Any]
    _paused_while_busy: bool
    _polls: int
    _last_poll: float

    def _accept(self, batch: dict[TopicPartition, list[Any]]) -> None:
        raise NotImplementedError

    async def _poll(
        self, timeout_ms: int, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]:
        """``getmany`` with the keeper told that a poll is in progress."""
        self._polls += 1
        try:
            batch: dict[TopicPartition, list[Any]] = await self.consumer.getmany(
                timeout_ms=timeout_ms, max_records=max_records
            )
            return batch
        finally:
            self._polls -= 1
            self._last_poll = time.monotonic()

    async def _keep_membership(self, tick: float) -> None:
        """Poll with every partition paused whenever no poll ended for ``tick`` seconds."""
        while not self._closed:
            await asyncio.sleep(tick)
            if self._closed or self._polls or time.monotonic() - self._last_poll < tick:
                continue
            self._paused_while_busy = True
            self.consumer.pause(*self.consumer.assignment())
            try:
                batch = await self._poll(0)
            except ConsumerStoppedError:
                return
            except KafkaError as exc:  # the iterator's own poll raises it to the bus
                log.debug("keep-alive poll of %r failed: %s", self.topic, exc)
                continue
            if not self._closed:
                self._accept(batch)  # fetched before the pause took effect

    def _resume_fetching(self) -> None:
        """Undo the keeper's pause (partitions held for a retry stay paused)."""
        if self._paused_while_busy:
            self._paused_while_busy = False
            self.consumer.resume(*(tp for tp in self.consumer.assignment() if tp not in self._held))
