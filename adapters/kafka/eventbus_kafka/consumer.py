"""A subscription: one Kafka consumer in the group, reading the topic and its retry topic.

- Offsets are committed manually, only ever the contiguous prefix of settled
  records per partition (:mod:`eventbus_kafka.offsets`), in batches every
  ``commit_interval_ms`` and always on revoke and close.
- ``nack(delay)`` re-publishes the record to the retry topic of its delay tier
  (:mod:`eventbus_kafka.retry`) with a not-before time and marks the original
  done, so its partition is not blocked. A retry record that is not due yet is
  held and its retry partition paused until then (at most the tier's delay);
  other partitions and tiers keep flowing.
- The first assignment of a partition with no committed offset commits the
  position it starts from, so "latest" means "as of subscribe" even if the
  partition later moves to another member before anything was consumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.errors import BrokerConnectionError, ConnectionLostError

from .codec import NOT_BEFORE_HEADER, decode, retry_headers
from .offsets import Entry, PartitionLog
from .retry import FORWARD_SLACK_MS, not_before, release_at, retry_topic, retry_topics, tier_for

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


async def best_effort(what: str, step: Awaitable[Any]) -> bool:
    """Await one shutdown step, logging its failure; True if the caller was cancelled.

    A ``CancelledError`` that is not aimed at the current task (aiokafka lets one
    out of ``Fetcher.close()`` when the broker is unreachable) is a failure of the
    step like any other, so shutdown goes on to the next step.
    """
    try:
        await step
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            return True
        log.warning("%s: the Kafka client was interrupted (CancelledError); going on", what)
    except Exception as exc:  # best effort: the session expires, the broker may be down
        log.warning("%s failed (%s: %s); going on", what, type(exc).__name__, exc)
    return False


class KafkaDelivery(Delivery):
    """A consumed record; settling it marks its offset done (and nack re-publishes)."""

    __slots__ = ("_dropped", "_entry", "_log", "_owner", "_record")

    def __init__(self, owner: KafkaSubscription, record: Any, log_: PartitionLog,
                 entry: Entry, attempt: int | None = None) -> None:
        decoded = decode(record.key, record.value, record.headers or ())
        super().__init__(
            topic=decoded.origin_topic or owner.topic,
            group=owner.options.group,
            envelope=decoded.envelope,
            attempt=attempt or decoded.attempt,
            message_id=f"{record.topic}/{record.partition}/{record.offset}",
            raw=None if decoded.envelope is not None else (record.value or b""),
            decode_error=decoded.error,
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

    async def _reject(self) -> None:
        # Kafka has no dead-letter queue; the bus's dead-letter middleware has
        # already published to <topic>.<group>.dlq, so the record is simply done.
        if not self._dropped:
            self._owner.settle(self._log, self._entry)

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


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: KafkaSubscription) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.owner.on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.owner.on_assigned(set(assigned))


class KafkaSubscription(Subscription):
    """One group member consuming ``topic`` and its retry topic."""

    def __init__(self, adapter: KafkaAdapter, topic: str, options: SubscribeOptions) -> None:
        self.adapter = adapter
        self.topic = topic
        self.options = options
        # Retry topic -> its delay tier (seconds).
        self.retry_tiers = retry_topics(topic, options.group, adapter.settings.retry_tiers)
        self.instance_index = 0  # set by adapter.instance_id with static membership
        settings = adapter.settings
        # The URL's start_from is deployment-wide and wins over the subscription's.
        self.start_from = settings.start_from or options.start_from
        self.consumer = AIOKafkaConsumer(
            **adapter.client_options(),
            group_id=kafka_group_id(options.group, topic),
            enable_auto_commit=False,
            # Only reached for a committed offset that is out of range (retention
            # deleted it): read the backlog rather than skip it. Where a new group
            # starts is decided when its partitions are pinned (_pin_new_partitions).
            auto_offset_reset="earliest",
            isolation_level=settings.isolation_level,
            group_instance_id=adapter.instance_id(self),
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            rebalance_timeout_ms=settings.rebalance_timeout_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            max_partition_fetch_bytes=max(1024 * 1024, settings.max_message_bytes + 4096),
        )
        self._logs: dict[TopicPartition, PartitionLog] = {}
        # Fetched records waiting for a prefetch slot: (record, log, entry, attempt),
        # attempt set only for a local redelivery (otherwise read from the headers).
        self._ready: deque[tuple[Any, PartitionLog, Entry, int | None]] = deque()
        # Local redeliveries after a failed nack re-publish, by due time (ms).
        self._local: list[tuple[int, int, Any, PartitionLog, Entry, int]] = []
        self._held: dict[TopicPartition, deque[tuple[Any, PartitionLog, Entry, int]]] = {}
        self._to_pin: set[TopicPartition] = set()
        # Partitions revoked and not (yet) assigned again: kept until the next
        # assignment says whether they came back to this member.
        self._suspended: dict[TopicPartition, PartitionLog] = {}
        self._outstanding = 0
        self._sequence = 0
        self._paused_while_busy = False
        self._closed = False
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()
        self._assigned = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._housekeeper: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self, timeout: float) -> None:
        """Join the group; return once the first assignment's start offsets are pinned."""
        masked = self.adapter.settings.masked_url
        self.consumer.subscribe([self.topic, *self.retry_tiers], listener=_Listener(self))
        self._housekeeper = asyncio.create_task(self._housekeeping())
        try:
            # start() bootstraps and joins the group (waiting for the first assignment);
            # then the housekeeper pins the start offsets of what was assigned.
            await asyncio.wait_for(self.consumer.start(), timeout)
            await asyncio.wait_for(self._assigned.wait(), timeout)
        except (KafkaError, OSError) as exc:
            await self.close()
            raise BrokerConnectionError(
                f"cannot subscribe to {self.topic!r} as group {self.options.group!r} on Kafka "
                f"at {masked}: {type(exc).__name__}: {exc}"
            ) from exc
        except TimeoutError as exc:
            await self.close()
            raise BrokerConnectionError(
                f"group {self.options.group!r} on Kafka at {masked} got no partition "
                f"assignment for {self.topic!r} within {timeout:.0f}s"
            ) from exc

    async def close(self) -> None:
        """Stop fetching, commit the settled prefix, leave the group.

        Every step runs even when an earlier one fails or the broker is gone (aiokafka
        then raises ``CancelledError`` from its own tasks); a cancellation of the
        caller is re-raised once everything was tried.
        """
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        what = f"closing the consumer of {self.topic!r} (group {self.options.group!r})"
        cancelled = False
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            cancelled |= await best_effort(what, asyncio.gather(
                self._housekeeper, return_exceptions=True))
        cancelled |= await best_effort(f"{what}: final commit",
                                       asyncio.wait_for(self.commit(), COMMIT_TIMEOUT))
        cancelled |= await best_effort(f"{what}: leaving the group", self.consumer.stop())
        self.adapter.forget(self)
        if cancelled:
            raise asyncio.CancelledError

    # -- settling and committing ------------------------------------------------

    def settle(self, log_: PartitionLog, entry: Entry) -> None:
        self.release_slot()
        if log_.settle(entry):
            self._dirty.set()

    def redeliver_locally(self, delivery: KafkaDelivery, delay: float,
                          error: BaseException | None) -> None:
        """Keep a delivery whose nack could not be re-published; hand it out after ``delay``."""
        log_, entry = delivery._log, delivery._entry
        entry.handed_out = False
        self.release_slot()
        if log_.revoked:
            return  # the partition's new owner reads it again from the last commit
        log.warning(
            "could not re-publish message %s of %r (group %r) to its retry topic (%s); "
            "it stays uncommitted and this consumer will redeliver it in %.1fs",
            delivery.message_id, self.topic, self.options.group,
            f"{type(error).__name__}: {error}" if error else "cancelled", delay,
        )
        self._hold_locally(delivery._record, log_, entry, int((time.time() + delay) * 1000),
                           delivery.attempt + 1)

    def _hold_locally(self, record: Any, log_: PartitionLog, entry: Entry, due_ms: int,
                      attempt: int) -> None:
        self._sequence += 1
        heapq.heappush(self._local, (due_ms, self._sequence, record, log_, entry, attempt))
        self._wake.set()

    def retry_topic_for(self, delay: float) -> str:
        """The retry topic of the delay tier for ``delay`` seconds."""
        tiers = self.adapter.settings.retry_tiers
        return retry_topic(self.topic, self.options.group, tier_for(delay, tiers))

    async def _forward(self, record: Any, log_: PartitionLog, entry: Entry,
                       not_before_ms: int) -> None:
        """Pass a record its tier released early (a delay beyond the longest tier) on."""
        remaining = (not_before_ms - time.time() * 1000) / 1000
        try:
            await self.adapter.send_record(self.retry_topic_for(remaining), record.key,
                                           record.value, list(record.headers or ()))
        except Exception as exc:
            attempt = decode(record.key, record.value, record.headers or ()).attempt
            log.warning("could not forward retry record %s/%s/%s (%s: %s); this consumer "
                        "will redeliver it in %.1fs", record.topic, record.partition,
                        record.offset, type(exc).__name__, exc, remaining)
            self._hold_locally(record, log_, entry, not_before_ms, attempt)
            return
        if log_.settle(entry):
            self._dirty.set()

    def release_slot(self) -> None:
        self._outstanding -= 1
        self._wake.set()

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit the settled prefix of every owned partition (or of ``only``)."""
        async with self._commit_lock:
            owned = self.consumer.assignment()
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp, log_ in self._logs.items():
                offset = log_.to_commit()
                if offset is not None and tp in owned and (only is None or tp in only):
                    offsets[tp] = OffsetAndMetadata(offset, "")
            if not offsets:
                return
            try:
                await self.consumer.commit(offsets)
            except (KafkaError, ConsumerStoppedError) as exc:
                log.warning(
                    "could not commit offsets of group %r on %r (%s: %s); retrying, and "
                    "until a commit succeeds a restart or rebalance redelivers what was "
                    "handled since the last one", self.options.group, self.topic,
                    type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc) else "",
                )
                self._dirty.set()
                return
            for tp, meta in offsets.items():
                self._logs[tp].committed = meta.offset

    async def _housekeeping(self) -> None:
        interval = self.adapter.settings.commit_interval_ms / 1000
        while True:
            if self._to_pin:
                await self._pin_new_partitions()
            await self._dirty.wait()
            await asyncio.sleep(interval)  # let acks accumulate into one commit
            self._dirty.clear()
            await self.commit()

    async def _pin_new_partitions(self) -> None:
        unpinned: list[TopicPartition] = []
        for tp in list(self._to_pin):
            self._to_pin.discard(tp)
            try:
                if await self.consumer.committed(tp) is None:
                    unpinned.append(tp)
            except (KafkaError, ConsumerStoppedError) as exc:  # revoked meanwhile, or down
                log.debug("could not pin the start of %s: %s", tp, exc)
        # On the first start only (nothing fetched yet), continue where the group's
        # Kafka group of older versions (group.id = the eventbus group) stopped.
        legacy = {} if self._assigned.is_set() else await self._legacy_offsets(unpinned)
        pins: dict[TopicPartition, OffsetAndMetadata] = {}
        fresh = [tp for tp in unpinned if tp not in legacy]
        starts: dict[TopicPartition, int] = dict(legacy)
        if fresh:
            try:  # one ListOffsets request for all of them
                starts.update(await (self.consumer.end_offsets(fresh)
                                     if self.start_from == "latest"
                                     else self.consumer.beginning_offsets(fresh)))
            except (KafkaError, ConsumerStoppedError) as exc:
                log.debug("could not find the start of %s: %s", fresh, exc)
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
        if pins:
            async with self._commit_lock:
                try:
                    await self.consumer.commit(pins)
                except (KafkaError, ConsumerStoppedError) as exc:
                    log.warning("could not commit the start offsets of group %r on %r "
                                "(%s); a new group falls back to the earliest record",
                                self.options.group, self.topic, type(exc).__name__)
        self._assigned.set()

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
                self.adapter.group_offsets(group, partitions), COMMIT_TIMEOUT)
        except Exception as exc:  # no such group, or no admin rights: start as configured
            log.debug("no offsets of the former Kafka group %r: %s", group, exc)
            return {}
        offsets = {tp: meta.offset for tp, meta in found.items()
                   if tp in partitions and meta is not None and meta.offset >= 0}
        if offsets:
            log.info("group %r on %r starts where the former Kafka group %r stopped: %s",
                     group, self.topic, group,
                     {f"{tp.topic}/{tp.partition}": o for tp, o in offsets.items()})
        return offsets

    # -- rebalance ---------------------------------------------------------------

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        new: set[TopicPartition] = set()
        for tp in assigned:
            log_ = self._suspended.pop(tp, None)
            if log_ is None:
                self._logs[tp] = PartitionLog()
                new.add(tp)
            else:
                self._restore(tp, log_)
        # What did not come back belongs to another member now.
        for tp, log_ in self._suspended.items():
            log_.revoked = True
            log_.stash.clear()
            self._held.pop(tp, None)
        self._suspended.clear()
        self._ready = deque(item for item in self._ready if not item[1].revoked)
        self._to_pin |= new
        self._dirty.set()  # wake the housekeeper to pin them
        if not new:
            self._assigned.set()
        self._wake.set()

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
        # No delivery of a revoked partition may start from now on (the bus asks
        # ``stale``); give the started ones a moment to finish, so their offsets are
        # committed before another member takes over (fewer repeats).
        logs = {tp: self._logs[tp] for tp in revoked if tp in self._logs}
        for log_ in logs.values():
            log_.suspended = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.adapter.settings.rebalance_grace_ms / 1000
        while not self._closed and loop.time() < deadline and any(
            log_.in_flight for log_ in logs.values()
        ):
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), deadline - loop.time())
        await self.commit(only=revoked)
        for tp, log_ in logs.items():
            del self._logs[tp]
            self._suspended[tp] = log_

    # -- iteration -----------------------------------------------------------------

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        prefetch = max(1, self.options.prefetch)
        while not self._closed:
            self._release_due()
            if self._ready and self._outstanding < prefetch:
                item = self._ready.popleft()
                record, log_, entry, attempt = item
                if log_.revoked:
                    continue
                if log_.suspended:  # wait for the assignment to say whose it is
                    log_.stash.append(item)
                    continue
                if attempt is None and record.topic in self.retry_tiers:
                    not_before_ms = not_before(record, NOT_BEFORE_HEADER)
                    if not_before_ms > time.time() * 1000 + FORWARD_SLACK_MS:
                        await self._forward(record, log_, entry, not_before_ms)
                        continue
                yield self._hand_out(record, log_, entry, attempt)
                continue
            wait = self._next_due()
            if self._outstanding >= prefetch or self._ready:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except TimeoutError:
                    if self._outstanding >= prefetch:
                        await self._poll_while_busy()
                continue
            self._resume_fetching()
            try:
                batch = await self.consumer.getmany(
                    timeout_ms=int(min(wait, 1.0) * 1000),
                    max_records=prefetch - self._outstanding,
                )
            except ConsumerStoppedError:
                return
            except KafkaError as exc:
                raise ConnectionLostError(
                    f"consumer of {self.topic!r} group {self.options.group!r} on Kafka at "
                    f"{self.adapter.settings.masked_url} failed: {type(exc).__name__}: {exc}"
                ) from exc
            if not self._closed:
                self._accept(batch)

    async def _poll_while_busy(self) -> None:
        """Poll with every partition paused while all prefetch slots are busy.

        aiokafka makes a member leave its group when it has not polled for
        ``max_poll_interval_ms``; a slow handler would then lose its partition and
        its record would be handled again elsewhere. Paused, a poll fetches nothing.
        """
        self._paused_while_busy = True
        self.consumer.pause(*self.consumer.assignment())
        try:
            batch = await self.consumer.getmany(timeout_ms=0)
        except ConsumerStoppedError:
            return
        except KafkaError as exc:
            log.debug("poll of %r while busy failed: %s", self.topic, exc)
            return
        if not self._closed:
            self._accept(batch)  # fetched just before the pause

    def _resume_fetching(self) -> None:
        if self._paused_while_busy:
            self._paused_while_busy = False
            self.consumer.resume(
                *(tp for tp in self.consumer.assignment() if tp not in self._held))

    def _hand_out(self, record: Any, log_: PartitionLog, entry: Entry,
                  attempt: int | None = None) -> Delivery:
        delivery = KafkaDelivery(self, record, log_, entry, attempt)
        entry.handed_out = True
        entry.started = False
        entry.attempt = attempt
        self._outstanding += 1
        return delivery

    def _accept(self, batch: dict[TopicPartition, list[Any]]) -> None:
        owned = self.consumer.assignment()
        now_ms = int(time.time() * 1000)
        for tp, records in batch.items():
            if tp not in owned:
                continue  # revoked while fetched: the next owner reads them
            log_ = self._logs.setdefault(tp, PartitionLog())
            held = self._held.get(tp)
            for record in records:
                entry = log_.add(record.offset, record)
                tier = self.retry_tiers.get(tp.topic)
                due = 0 if tier is None else release_at(
                    record, not_before(record, NOT_BEFORE_HEADER), tier, now_ms)
                if held is not None:
                    held.append((record, log_, entry, due))
                elif due > now_ms:
                    held = self._held[tp] = deque([(record, log_, entry, due)])
                    self.consumer.pause(tp)  # nothing more from it until this one is due
                else:
                    self._ready.append((record, log_, entry, None))

    def _release_due(self) -> None:
        now_ms = int(time.time() * 1000)
        while self._local and self._local[0][0] <= now_ms:
            _, _, record, log_, entry, attempt = heapq.heappop(self._local)
            if not log_.revoked:  # else the partition's new owner reads it again
                self._ready.append((record, log_, entry, attempt))
        if not self._held:
            return
        for tp in list(self._held):
            held = self._held[tp]
            while held and held[0][3] <= now_ms:
                record, log_, entry, _ = held.popleft()
                self._ready.append((record, log_, entry, None))
            if not held:
                del self._held[tp]
                if tp in self.consumer.assignment():
                    self.consumer.resume(tp)

    def _next_due(self) -> float:
        """Seconds until the next held retry record is due (at most one second)."""
        dues = [held[0][3] for held in self._held.values() if held]
        if self._local:
            dues.append(self._local[0][0])
        if not dues:
            return 1.0
        return max(0.0, min(1.0, min(dues) / 1000 - time.time()))
