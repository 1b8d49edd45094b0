"""A subscription: one Kafka consumer in its group, reading the topic and its retry topics.

- Offsets are committed manually, only ever the contiguous prefix of settled
  records per partition (:mod:`eventbus_kafka.offsets`), in batches (every
  ``commit_every`` settled records or ``commit_interval``, whichever comes
  first; one in flight, the next started as soon as it is done) and always on
  revoke and close.
- ``nack(delay)`` re-publishes the record to the retry topic of its delay tier
  (:mod:`eventbus_kafka.provision`) with a not-before time and marks the original
  done, so its partition is not blocked. A retry record that is not due yet is
  held and its retry partition paused until then (at most the tier's delay);
  other partitions and tiers keep flowing.
- The first assignment of a partition with no committed offset commits the
  position it starts from, so "latest" means "as of subscribe" even if the
  partition later moves to another member before anything was consumed.
- While handlers run and nothing iterates the subscription, a keeper task polls
  with every partition paused (:mod:`eventbus_kafka.keepalive`), so a slow handler
  does not cost the member its group membership.

Group membership and rebalances live in :mod:`eventbus_kafka.rebalance` (a
``RebalanceTracker`` each subscription holds), the delivery in
:mod:`eventbus_kafka.delivery`. The module is over the house's ~400 lines because the
hand-out loop, the commit cadence it paces and the retry-tier hold share one state (the
ready queue, the settled count, the commit in flight); split, each part would reach into
the others' fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.adapters_util import ExceptionMap, map_exceptions, pick_tier
from eventbus.errors import BrokerConnectionError, ConnectionLostError
from eventbus.tasks import stop_tasks

from .codec import NOT_BEFORE_HEADER, decode
from .delivery import KafkaDelivery, best_effort
from .keepalive import PollKeeper, keeper_tick
from .offsets import Entry, PartitionLog
from .provision import FORWARD_SLACK_MS, not_before, release_at, retry_topic, retry_topics
from .rebalance import COMMIT_TIMEOUT, Listener, RebalanceTracker, kafka_group_id
from .runs import OPEN, RunCounter
from .watch import TopicWatch

if TYPE_CHECKING:
    from .adapter import KafkaAdapter

log = logging.getLogger("eventbus.kafka")

# While a commit is in flight, the hand-outs between two yields of the event loop: its
# response is read within about this many records of arriving (docs/adapters/kafka.md,
# "Commits"); each yield costs a pass of the event loop.
YIELD_EVERY = 8


class KafkaSubscription(PollKeeper, RunCounter, TopicWatch, Subscription):
    """One group member consuming ``topic`` and its retry topic."""

    def __init__(self, adapter: KafkaAdapter, topic: str, options: SubscribeOptions) -> None:
        self.adapter = adapter
        self.topic = topic
        self.options = options
        # Retry topic -> its delay tier (seconds).
        self.retry_tiers = retry_topics(topic, options.group, adapter.settings.delay_tiers)
        self.instance_index = 0  # set by adapter.instance_id with static membership
        settings = adapter.settings
        # Where a new group starts, as the core decided (the subscription's, else the URL's).
        self.start_from = options.start_from
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
            session_timeout_ms=settings.ms(settings.session_timeout),
            heartbeat_interval_ms=settings.ms(settings.heartbeat_interval),
            rebalance_timeout_ms=settings.ms(settings.rebalance_timeout),
            max_poll_interval_ms=settings.ms(settings.max_poll_interval),
            max_partition_fetch_bytes=max(1024 * 1024, settings.max_message_bytes + 4096),
        )
        self._logs: dict[TopicPartition, PartitionLog] = {}
        # Fetched records waiting for a prefetch slot: (record, log, entry, attempt),
        # attempt set only for a local redelivery (otherwise read from the headers).
        self._ready: deque[tuple[Any, PartitionLog, Entry, int | None]] = deque()
        # Local redeliveries after a failed nack re-publish, by due time (ms).
        self._local: list[tuple[int, int, Any, PartitionLog, Entry, int]] = []
        self._held: dict[TopicPartition, deque[tuple[Any, PartitionLog, Entry, int]]] = {}
        self._outstanding = 0
        self._sequence = 0
        self._paused_while_busy = False
        self._polls = 0  # getmany() calls in progress
        self._last_poll = time.monotonic()
        self._closed = False
        self._wake = asyncio.Event()
        self._dirty = asyncio.Event()
        # The commit cadence, in records settled by this subscription: how many when the
        # last commit started, and when the last one that succeeded started.
        self._commit_due = asyncio.Event()  # commit_every records settled since a commit
        self._settled = 0
        # Hand-outs, and how many into a commit in flight to start yielding every
        # YIELD_EVERY of them (_keep_pace_with_commits).
        self._handed = 0
        self._commit_handed = 0
        self._yield_after = 0
        self._commit_started = 0
        self._commit_covered = 0
        self._commit_idle = asyncio.Event()
        self._commit_idle.set()
        self._commit_lock = asyncio.Lock()
        # Group membership: start offsets and rebalances (rebalance.py).
        self.rebalance = RebalanceTracker(
            adapter,
            self.consumer,
            topic,
            options,
            start_from=self.start_from,
            retry_tiers=self.retry_tiers,
            logs=self._logs,
            ready=self._ready,
            held=self._held,
            wake=self._wake,
            dirty=self._dirty,
            commit_lock=self._commit_lock,
            commit=self.commit,
            closed=self._is_closed,
        )
        self._housekeeper: asyncio.Task[None] | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        # Why the iteration must end (the topic was deleted underneath), set by the watch.
        self._lost: Exception | None = None

    def _is_closed(self) -> bool:
        return self._closed

    # -- lifecycle -------------------------------------------------------------

    async def start(self, timeout: float) -> None:
        """Join the group; return once the first assignment's start offsets are pinned."""
        masked = self.adapter.settings.masked_url
        self.consumer.subscribe([self.topic, *self.retry_tiers], listener=Listener(self.rebalance))
        self._housekeeper = asyncio.create_task(
            self._housekeeping(), name=f"eventbus-kafka-housekeeper[{self.topic}]"
        )
        failures: ExceptionMap = {
            TimeoutError: (BrokerConnectionError, f"no partition assignment within {timeout:.0f}s"),
            (KafkaError, OSError): BrokerConnectionError,
        }
        try:
            with map_exceptions(
                failures,
                what=(
                    f"subscribing to {self.topic!r} as group {self.options.group!r} on Kafka "
                    f"at {masked}"
                ),
            ):
                # start() bootstraps and joins the group (waiting for the first
                # assignment); then the housekeeper pins the start offsets of it.
                await asyncio.wait_for(self.consumer.start(), timeout)
                await asyncio.wait_for(self.rebalance.assigned.wait(), timeout)
            self._keeper = asyncio.create_task(
                self._keep_membership(keeper_tick(self.adapter.settings.max_poll_interval)),
                name=f"eventbus-kafka-keeper[{self.topic}]",
            )
            self._watcher = asyncio.create_task(
                self._watch_topic(), name=f"eventbus-kafka-topic-watch[{self.topic}]"
            )
        except Exception:
            await self.close()
            raise

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
        tasks = [t for t in (self._housekeeper, self._keeper, self._watcher) if t is not None]
        if tasks:
            cancelled |= await best_effort(what, stop_tasks(tasks, what=what, log=log))
        cancelled |= await best_effort(
            f"{what}: final commit", asyncio.wait_for(self.commit(final=True), COMMIT_TIMEOUT)
        )
        cancelled |= await best_effort(f"{what}: leaving the group", self.consumer.stop())
        # When stop() was interrupted (by aiokafka's own CancelledError) it skipped
        # closing the client's connections; close them, or their sockets leak.
        client = getattr(self.consumer, "_client", None)
        if client is not None:
            cancelled |= await best_effort(f"{what}: closing connections", client.close())
        self.adapter.forget(self)
        if cancelled:
            raise asyncio.CancelledError

    # -- settling and committing ------------------------------------------------

    def settle(self, log_: PartitionLog, entry: Entry) -> None:
        self.release_slot()
        if log_.settle(entry):
            self._dirty.set()
        self._settled += 1
        if self._settled - self._commit_started >= self.adapter.settings.commit_every:
            self._commit_due.set()

    def redeliver_locally(
        self, delivery: KafkaDelivery, delay: float, error: BaseException | None
    ) -> None:
        """Keep a delivery whose nack could not be re-published; hand it out after ``delay``."""
        log_, entry = delivery._log, delivery._entry
        entry.handed_out = False
        self.release_slot()
        if log_.revoked:
            return  # the partition's new owner reads it again from the last commit
        log.warning(
            "could not re-publish message %s of %r (group %r) to its retry topic (%s); "
            "it stays uncommitted and this consumer will redeliver it in %.1fs",
            delivery.message_id,
            self.topic,
            self.options.group,
            f"{type(error).__name__}: {error}" if error else "cancelled",
            delay,
        )
        self._hold_locally(
            delivery._record, log_, entry, int((time.time() + delay) * 1000), delivery.attempt + 1
        )

    def _hold_locally(
        self, record: Any, log_: PartitionLog, entry: Entry, due_ms: int, attempt: int
    ) -> None:
        self._sequence += 1
        heapq.heappush(self._local, (due_ms, self._sequence, record, log_, entry, attempt))
        self._wake.set()

    def retry_topic_for(self, delay: float) -> str:
        """The retry topic of the delay tier for ``delay`` seconds."""
        tiers = self.adapter.settings.delay_tiers
        return retry_topic(self.topic, self.options.group, pick_tier(delay, tiers))

    async def _forward(
        self, record: Any, log_: PartitionLog, entry: Entry, not_before_ms: int
    ) -> None:
        """Pass a record its tier released early (a delay beyond the longest tier) on."""
        remaining = (not_before_ms - time.time() * 1000) / 1000
        try:
            await self.adapter.send_record(
                self.retry_topic_for(remaining),
                record.key,
                record.value,
                list(record.headers or ()),
            )
        except Exception as exc:
            attempt = decode(record.key, record.value, record.headers or ()).attempt
            log.warning(
                "could not forward retry record %s/%s/%s (%s: %s); this consumer "
                "will redeliver it in %.1fs",
                record.topic,
                record.partition,
                record.offset,
                type(exc).__name__,
                exc,
                remaining,
            )
            self._hold_locally(record, log_, entry, not_before_ms, attempt)
            return
        if log_.settle(entry):
            self._dirty.set()

    def release_slot(self) -> None:
        self._outstanding -= 1
        self._wake.set()

    async def commit(self, only: set[TopicPartition] | None = None, final: bool = False) -> None:
        """Commit the settled prefix of every owned partition (or of ``only``).

        ``final`` (a revoke, the close): nothing more starts here, so a partition with
        no record handed out and unsettled is committed clean (no ``OPEN`` mark),
        telling the next owner that no crash can have run records past it uncounted.
        An offset that did not move is not committed again just to clear the mark (a
        deleted topic would hold the close for the commit timeout): the next owner is
        then careful for nothing.
        """
        async with self._commit_lock:
            owned = self.consumer.assignment()
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp, log_ in self._logs.items():
                if tp not in owned or (only is not None and tp not in only):
                    continue
                # Handed out and unsettled: it may run (or have run) past the commit.
                clean = final and not log_.in_flight
                offset = log_.to_commit()
                if offset is not None:
                    offsets[tp] = OffsetAndMetadata(offset, "" if clean else OPEN)
            settled = self._settled
            if not offsets:
                self._commit_covered = settled  # nothing settled is committable yet
                return
            self._commit_started = settled
            self._commit_idle.clear()
            self._commit_handed = self._handed
            try:
                # Bounded: aiokafka retries a retriable error (a partition gone with its
                # topic: UnknownTopicOrPartition) for ever, holding the commit lock.
                await asyncio.wait_for(self.consumer.commit(offsets), COMMIT_TIMEOUT)
            except (KafkaError, ConsumerStoppedError, TimeoutError) as exc:
                log.warning(
                    "could not commit offsets of group %r on %r (%s: %s); retrying, and "
                    "until a commit succeeds a restart or rebalance redelivers what was "
                    "handled since the last one",
                    self.options.group,
                    self.topic,
                    type(exc).__name__,
                    str(exc).strip().splitlines()[0] if str(exc) else "timed out",
                )
                self._dirty.set()
                await self._check_partitions_exist(set(offsets))
                return
            finally:
                self._commit_idle.set()
                # Yield from three quarters of this commit's hand-outs on in the next
                # (_keep_pace_with_commits): the figure shrinks whenever the response
                # was in before the yields began (read late), and grows when it was not.
                self._yield_after = (self._handed - self._commit_handed) * 3 // 4
            self._commit_covered = settled
            for tp, meta in offsets.items():
                self._logs[tp].committed = meta.offset

    async def _housekeeping(self) -> None:
        # The commit cadence (docs/adapters/kafka.md, "Commits"): after an ack, commit
        # once commit_every records were settled or commit_interval passed, whichever
        # comes first. What a crash re-runs is what was settled since the last commit.
        interval = self.adapter.settings.commit_interval
        while True:
            if self.rebalance.has_new_partitions:
                await self.rebalance.pin_new_partitions()
            await self._dirty.wait()
            if self._settled - self._commit_started < self.adapter.settings.commit_every:
                self._commit_due.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._commit_due.wait(), interval)
            self._dirty.clear()
            await self.commit()

    # -- iteration -----------------------------------------------------------------

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        prefetch = max(1, self.options.prefetch)
        while not self._closed:
            if self._lost is not None:
                raise self._lost
            if self._local or self._held:
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
                if not log_.head_checked:
                    entry.earlier_runs = await self._count_head_run(record, log_, entry)
                    self._ready.appendleft(item)  # checked again: a rebalance may have come
                    continue
                await self._keep_pace_with_commits()
                yield self._hand_out(record, log_, entry, attempt)
                continue
            wait = self._next_due()
            if self._outstanding >= prefetch or self._ready:
                self._wake.clear()
                # Meanwhile the keeper polls (keepalive): the member stays in its group.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
                continue
            self._resume_fetching()
            try:
                with map_exceptions(
                    {KafkaError: ConnectionLostError},
                    what=(
                        f"consuming {self.topic!r} as group {self.options.group!r} on Kafka at "
                        f"{self.adapter.settings.masked_url}"
                    ),
                    hint="subscribing again",
                ):
                    batch = await self._poll(
                        int(min(wait, 1.0) * 1000), prefetch - self._outstanding
                    )
            except ConsumerStoppedError:
                return
            if not self._closed:
                self._accept(batch)

    async def _keep_pace_with_commits(self) -> None:
        """Let commits keep pace with handling. Fast handlers never yield the loop within
        a fetched batch, so without this no commit would start, nor would the response
        of one in flight be read, until the batch is done. So: once ``commit_every``
        records are settled since the last commit started and none is in flight, yield
        once so the housekeeper starts one; while one is in flight, yield every
        ``YIELD_EVERY`` hand-outs so its response is read (and the next one started)
        within a few records of arriving. With ``max_uncommitted`` set, also hold the
        hand-out while that many settled records are not covered by a finished commit
        and one is in flight: a crash then re-runs at most about that many, at the
        cost of throughput when handlers outrun the commit round trip. A commit that
        cannot advance (an earlier record still running) holds nothing: it is not in
        flight."""
        settings = self.adapter.settings
        self._handed += 1
        if self._commit_idle.is_set():
            if self._settled - self._commit_started >= settings.commit_every:
                await asyncio.sleep(0)
        elif (
            self._handed - self._commit_handed >= self._yield_after
            and self._handed % YIELD_EVERY == 0
        ):
            await asyncio.sleep(0)
        bound = settings.max_uncommitted
        if (
            bound
            and self._settled - self._commit_covered >= bound
            and not self._commit_idle.is_set()
        ):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._commit_idle.wait(), COMMIT_TIMEOUT)

    def _hand_out(
        self, record: Any, log_: PartitionLog, entry: Entry, attempt: int | None = None
    ) -> Delivery:
        delivery = KafkaDelivery(self, record, log_, entry, attempt, entry.earlier_runs)
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
            tier = self.retry_tiers.get(tp.topic)
            if tier is None and held is None:  # the main topic: everything is ready now
                add, ready = log_.add, self._ready.append
                for record in records:
                    ready((record, log_, add(record.offset, record), None))
                continue
            for record in records:
                entry = log_.add(record.offset, record)
                due = (
                    0
                    if tier is None
                    else release_at(record, not_before(record, NOT_BEFORE_HEADER), tier, now_ms)
                )
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
