"""A consumed Kafka record as a :class:`~eventbus.adapter.Delivery`, and shutdown steps."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from eventbus.adapter import Delivery

from .codec import decode, retry_headers
from .offsets import Entry, PartitionLog

if TYPE_CHECKING:
    from .consumer import KafkaSubscription

log = logging.getLogger("eventbus.kafka")


async def best_effort(what: str, step: Awaitable[Any]) -> bool:
    """Await one shutdown step, logging its failure; True if the caller was cancelled.

    A ``CancelledError`` that is not aimed at the current task (aiokafka lets one
    out of ``Fetcher.close()`` when the broker is unreachable) is a failure of the
    step like any other, so shutdown goes on to the next step.
    """
    started = time.monotonic()
    try:
        await step
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            log.warning("%s: cut short after %.1fs", what, time.monotonic() - started)
            return True
        log.warning("%s: the Kafka client was interrupted (CancelledError); going on", what)
    except Exception as exc:  # best effort: the session expires, the broker may be down
        log.warning("%s failed (%s: %s); going on", what, type(exc).__name__, exc)
    else:
        took = time.monotonic() - started
        if took > SLOW_STEP:  # a close that stalls says where
            log.warning("%s took %.1fs", what, took)
    return False


SLOW_STEP = 2.0
"""Seconds after which a shutdown step that finished is logged as slow."""


class KafkaDelivery(Delivery):
    """A consumed record; settling it marks its offset done (and nack re-publishes)."""

    __slots__ = ("_dropped", "_entry", "_log", "_owner", "_record")
    stable_id = True  # message_id is the offset: the same on every redelivery

    def __init__(
        self,
        owner: KafkaSubscription,
        record: Any,
        log_: PartitionLog,
        entry: Entry,
        attempt: int | None = None,
        earlier_runs: int = 0,
    ) -> None:
        decoded = decode(record.key, record.value, record.headers or ())
        super().__init__(
            decoded,
            topic=decoded.origin_topic or owner.topic,
            group=owner.options.group,
            # A local redelivery knows its attempt; otherwise the record's own count
            # plus the runs that crashed before it was settled (eventbus_kafka.runs).
            attempt=attempt or decoded.attempt + earlier_runs,
            message_id=f"{record.topic}/{record.partition}/{record.offset}",
        )
        self._owner = owner
        self._record = record
        self._log = log_
        self._entry = entry
        self._dropped = False

    @property
    def stale(self) -> bool:
        """True once its partition was revoked before it started; asking gives it up.

        The bus asks right before running it. A stale delivery is dropped unrun and
        settling it does nothing: the partition's next owner reads the record again,
        or, if the partition comes back to this member, this subscription hands the
        record out anew.
        """
        if self._dropped:
            return True
        log_, entry = self._log, self._entry
        if not (log_.revoked or log_.suspended):
            if self._settled is None:
                entry.started = True
            return False
        if entry.started or self._settled is not None:
            return log_.revoked
        self._dropped = True
        entry.handed_out = False
        entry.dropped = log_.suspended
        self._owner.release_slot()
        return True

    async def _ack(self) -> None:
        if not self._dropped:
            self._owner.settle(self._log, self._entry)
            await self._owner.commit_if_counted(self._log, self._entry)

    async def _reject(self) -> None:
        # Kafka has no dead-letter queue; the bus's dead-letter middleware has
        # already published to <topic>.<group>.dlq, so the record is simply done.
        if not self._dropped:
            self._owner.settle(self._log, self._entry)
            await self._owner.commit_if_counted(self._log, self._entry)

    async def _nack(self, delay: float) -> None:
        record = self._record
        if self._dropped:
            return
        if self._log.revoked:
            # The partition moved to another member, which reads this record again
            # from the last commit; re-publishing it too would double it.
            self._owner.release_slot()
            return
        headers = retry_headers(
            record.headers or (),
            attempt=self.attempt + 1,
            not_before_ms=int((time.time() + delay) * 1000),
            origin=self.topic,
        )
        try:
            await self._owner.adapter.send_record(
                self._owner.retry_topic_for(delay), record.key, record.value, headers
            )
        except Exception as exc:
            # Not re-published (leader change, timeout): keep the record ourselves
            # and hand it out again after the delay. Its offset stays unsettled, so
            # the commit cannot pass it, and it still has an owner.
            self._owner.redeliver_locally(self, delay, exc)
            return
        except BaseException:
            self._owner.redeliver_locally(self, delay, None)
            raise
        self._owner.settle(self._log, self._entry)
        await self._owner.commit_if_counted(self._log, self._entry)
