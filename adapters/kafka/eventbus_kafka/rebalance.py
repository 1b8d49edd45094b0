"""Group membership of a subscription: its Kafka group, start offsets and rebalances.

aiokafka's rebalances are eager: every rebalance revokes every partition of a
member and assigns them again, often to the same member. A revoked partition is
therefore *suspended* first (no delivery of it may start: the bus asks
``Delivery.stale``), and the next assignment decides: a partition that came back is
restored as it was (nothing is read or run twice), one that went elsewhere is
retired (its queued deliveries are stale for good).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from eventbus.adapter import SubscribeOptions

from .offsets import Entry, PartitionLog

if TYPE_CHECKING:
    from .adapter import KafkaAdapter

log = logging.getLogger("eventbus.kafka")

COMMIT_TIMEOUT = 5.0


def kafka_group_id(group: str, topic: str) -> str:
    """The Kafka ``group.id`` of eventbus group ``group`` on ``topic``.

    One Kafka group per (group, topic): a service subscribes to several topics under
    one group (the bus's default group is its source), each subscription with its own
    consumer, and a shared Kafka group would make every subscribe revoke and rebalance
    all its siblings.
    """
    return f"{group}.{topic}"


Ready = deque[tuple[Any, PartitionLog, Entry, int | None]]
Held = dict[TopicPartition, deque[tuple[Any, PartitionLog, Entry, int]]]


class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Passes aiokafka's rebalance callbacks to the subscription's tracker."""

    def __init__(self, tracker: RebalanceTracker) -> None:
        self.tracker = tracker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.tracker.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.tracker.on_assigned(set(assigned))


class RebalanceTracker:
    """The group membership of one ``KafkaSubscription``: start offsets of new
    partitions, and what a rebalance does to fetched records (see the module doc).

    Its collaborators are the subscription's, passed in: the ``consumer``; the
    per-partition ``logs``, the ``ready`` queue and the ``held`` retry records it
    shares with the subscription (changed in place, never replaced); ``wake`` (the
    iteration looks again) and ``dirty`` (the housekeeper commits, or pins what this
    tracker found new); ``commit`` with its ``commit_lock``; and ``closed``, whether
    the subscription is closing. It owns the rest: partitions to pin, those
    suspended by a revoke, and what tells a topic created anew.
    """

    def __init__(
        self,
        adapter: KafkaAdapter,
        consumer: AIOKafkaConsumer,
        topic: str,
        options: SubscribeOptions,
        *,
        start_from: str,
        retry_tiers: dict[str, float],
        logs: dict[TopicPartition, PartitionLog],
        ready: Ready,
        held: Held,
        wake: asyncio.Event,
        dirty: asyncio.Event,
        commit_lock: asyncio.Lock,
        commit: Callable[..., Awaitable[None]],
        closed: Callable[[], bool],
    ) -> None:
        self.adapter = adapter
        self.consumer = consumer
        self.topic = topic
        self.options = options
        self.start_from = start_from
        self.retry_tiers = retry_tiers
        self._logs = logs
        self._ready = ready
        self._held = held
        self._wake = wake
        self._dirty = dirty
        self._commit_lock = commit_lock
        self._commit = commit
        self._closed = closed
        # Set once the first assignment's start offsets are pinned (start() waits).
        self.assigned = asyncio.Event()
        self._to_pin: set[TopicPartition] = set()
        # Topic deleted and created anew: partition counts at the last assignment,
        # topics then missing, and partitions to read from their start.
        self._counts: dict[str, int] = {}
        self._missing: set[str] = set()
        self._restart: set[TopicPartition] = set()
        # Partitions revoked and not (yet) assigned again: kept until the next
        # assignment says whether they came back to this member.
        self._suspended: dict[TopicPartition, PartitionLog] = {}

    @property
    def has_new_partitions(self) -> bool:
        """Whether assigned partitions wait for their start offset (pin_new_partitions)."""
        return bool(self._to_pin)

    async def pin_new_partitions(self) -> None:
        """Fix where each newly assigned partition starts, and commit that position."""
        unpinned: list[TopicPartition] = []
        for tp in list(self._to_pin):
            self._to_pin.discard(tp)
            if tp in self._restart:  # its topic was created anew: from the start
                self._restart.discard(tp)
                unpinned.append(tp)
                continue
            try:
                if await self.consumer.committed(tp) is None:
                    unpinned.append(tp)
            except (KafkaError, ConsumerStoppedError) as exc:  # revoked meanwhile, or down
                log.debug("could not pin the start of %s: %s", tp, exc)
        # On the first start only (nothing fetched yet), continue where the group's
        # Kafka group of older versions (group.id = the eventbus group) stopped.
        legacy = {} if self.assigned.is_set() else await self._legacy_offsets(unpinned)
        pins: dict[TopicPartition, OffsetAndMetadata] = {}
        fresh = [tp for tp in unpinned if tp not in legacy]
        starts: dict[TopicPartition, int] = dict(legacy)
        # start_from is where a new group starts. A partition with no committed offset
        # after the group started (added to the topic later), or of a topic deleted
        # underneath and created anew, holds only what was published since: read it
        # from the start, whatever start_from says.
        recreated = self.adapter.recreated
        later = self.assigned.is_set()
        earliest = [
            tp for tp in fresh if self.start_from == "earliest" or later or tp.topic in recreated
        ]
        latest = [tp for tp in fresh if tp not in earliest]
        for wanted, find in (
            (earliest, self.consumer.beginning_offsets),
            (latest, self.consumer.end_offsets),
        ):
            if not wanted:
                continue
            try:  # one ListOffsets request for all of them
                starts.update(await find(wanted))
            except (KafkaError, ConsumerStoppedError) as exc:
                log.debug("could not find the start of %s: %s", wanted, exc)
        for tp, start in starts.items():
            try:
                self.consumer.seek(tp, start)
            except (KafkaError, ConsumerStoppedError) as exc:  # revoked meanwhile
                log.debug("could not pin the start of %s: %s", tp, exc)
                continue
            self._forget_fetched(tp)
            pins[tp] = OffsetAndMetadata(start, "")
        owned = self.consumer.assignment()
        pins = {tp: meta for tp, meta in pins.items() if tp in owned}
        recreated.difference_update(tp.topic for tp in pins)
        if pins:
            async with self._commit_lock:
                try:
                    await self.consumer.commit(pins)
                except (KafkaError, ConsumerStoppedError) as exc:
                    log.warning(
                        "could not commit the start offsets of group %r on %r "
                        "(%s); a new group falls back to the earliest record",
                        self.options.group,
                        self.topic,
                        type(exc).__name__,
                    )
        self.assigned.set()

    def _forget_fetched(self, tp: TopicPartition) -> None:
        """Drop what was fetched of ``tp`` before its start was fixed (a race on rebalance)."""
        log_ = self._logs.get(tp)
        if log_ is not None and log_.entries:
            log_.revoked = True  # unstarted deliveries of it are stale
            self._logs[tp] = PartitionLog()

    async def _legacy_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        if not partitions:
            return {}
        group = self.options.group
        try:
            found = await asyncio.wait_for(
                self.adapter.group_offsets(group, partitions), COMMIT_TIMEOUT
            )
        except Exception as exc:  # no such group, or no admin rights: start as configured
            log.debug("no offsets of the former Kafka group %r: %s", group, exc)
            return {}
        offsets = {
            tp: meta.offset
            for tp, meta in found.items()
            if tp in partitions and meta is not None and meta.offset >= 0
        }
        if offsets:
            log.info(
                "group %r on %r starts where the former Kafka group %r stopped: %s",
                group,
                self.topic,
                group,
                {f"{tp.topic}/{tp.partition}": o for tp, o in offsets.items()},
            )
        return offsets

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """A rebalance ended: restore the suspended partitions that came back, retire
        the others, and queue the new ones for pinning."""
        new: set[TopicPartition] = set()
        anew = self._topics_created_anew()
        for tp in assigned:
            log_ = self._suspended.pop(tp, None)
            if log_ is not None and tp.topic in anew:
                log_.revoked = True  # a partition of the old topic: nothing of it is ours
                log_.stash.clear()
                self._held.pop(tp, None)
                log_ = None
            if log_ is None:
                self._logs[tp] = PartitionLog()
                new.add(tp)
                if tp.topic in anew:
                    self._restart.add(tp)
            else:
                self._restore(tp, log_)
        # What did not come back belongs to another member now.
        for tp, log_ in self._suspended.items():
            log_.revoked = True
            log_.stash.clear()
            self._held.pop(tp, None)
        self._suspended.clear()
        kept = [item for item in self._ready if not item[1].revoked]
        self._ready.clear()  # in place: the subscription holds this deque
        self._ready.extend(kept)
        self._to_pin |= new
        self._dirty.set()  # wake the housekeeper to pin them
        if not new:
            self.assigned.set()
        self._wake.set()

    def _topics_created_anew(self) -> set[str]:
        """Topics of this subscription that were deleted and created again since the last
        assignment, as the consumer's metadata shows: one that was missing and is back,
        or one with fewer partitions than before (Kafka never takes partitions away).
        Their partitions are partitions of a new topic, read from its start: going on at
        the old position would skip the new topic's first records."""
        anew: set[str] = set()
        for topic in (self.topic, *self.retry_tiers):
            partitions = self.consumer.partitions_for_topic(topic)
            if partitions is None:
                self._missing.add(topic)
                continue
            if topic in self._missing or len(partitions) < self._counts.get(topic, 0):
                anew.add(topic)
            self._missing.discard(topic)
            self._counts[topic] = len(partitions)
        for topic in anew:
            log.warning(
                "topic %r was deleted and created again underneath group %r; "
                "reading it from its start",
                topic,
                self.options.group,
            )
            self.adapter.topic_deleted(topic)
        return anew

    def _restore(self, tp: TopicPartition, log_: PartitionLog) -> None:
        """A partition came straight back: keep its fetched records, read on after them."""
        log_.suspended = False
        self._logs[tp] = log_
        if log_.next_offset is not None:
            # The group would restart it at the last commit, re-reading records
            # this member has handled or still holds.
            self.consumer.seek(tp, log_.next_offset)
        items: list[tuple[Any, PartitionLog, Entry, int | None]] = []
        for entry in log_.entries:
            if entry.dropped:  # given up unstarted while suspended: hand it out anew
                entry.dropped = False
                items.append((entry.record, log_, entry, entry.attempt))
        items += log_.stash
        log_.stash = []
        self._ready.extendleft(reversed(items))
        if tp in self._held:
            self.consumer.pause(tp)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        """A rebalance starts: suspend ``revoked``, let started deliveries finish
        (up to ``rebalance_grace``) and commit them."""
        # No delivery of a revoked partition may start from now on (the bus asks
        # ``stale``); give the started ones a moment to finish, so their offsets are
        # committed before another member takes over (fewer repeats).
        logs = {tp: self._logs[tp] for tp in revoked if tp in self._logs}
        for log_ in logs.values():
            log_.suspended = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.adapter.settings.rebalance_grace
        while (
            not self._closed()
            and loop.time() < deadline
            and any(log_.in_flight for log_ in logs.values())
        ):
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
        await self._commit(only=revoked, final=True)
        for tp, log_ in logs.items():
            del self._logs[tp]
            self._suspended[tp] = log_
