"""Counting the runs of a record across crashes, in the group's committed offset.

Kafka keeps no delivery count: a record whose handler kills the process (an
out-of-memory kill, ``os._exit``) is read again from the committed offset by the
next member, forever. After a restart or a rebalance such a record is at the
committed position of its partition (everything before it was settled and
committed), or a few records past it (below). So, before the first record of a
partition in an assignment is handed out, the subscription reads the group's
committed offset for that partition; when the record sits exactly there it commits
that same offset again with metadata carrying the run about to start
(``OffsetAndMetadata(offset, "eventbus-runs=N")``), and the delivery's ``attempt``
counts the earlier runs the metadata recorded. The bus's crash-loop budget
(``RetryPolicy.max_attempts``) then dead-letters the record before it runs again
once those runs reach it.

Settling that record commits past it at once (which clears the metadata) and waits
for the commit, so the next record, run right after it, cannot crash the process
before the finished run is on record. Records handed out beside it that crash the
process while it runs count a run against it, as every broker's delivery count
does for the messages in flight at a crash. This costs two round trips (read,
commit) before the first record of each partition after an assignment and one
commit when it is settled; nothing on the records after it.

"At the committed position" needs commits to keep up with the records
that started: commits are batched (the commit cadence), so a killing record may sit
a few records past the committed offset, behind records that were settled and not
yet committed when the process died. Each restart would then count (and commit past)
only the head, and the crash loop would move one record per restart (#25's poison
mix stalled on it). So every commit of a member that is still running marks its
metadata ``OPEN`` (records past it may have started); only a final commit (revoke,
close) with nothing running past it is clean. A new owner that finds the head's
commit open (or counted) is *careful* for the next ``careful_window()`` records of
the partition: each commits past itself as soon as it is settled, before the next
one starts (with one handler at a time), so a killing record among them is at the
committed offset when it kills, and counted from the next restart on. That costs
one commit round trip per record, only after a crash and only for that window.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import ConsumerStoppedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from eventbus.adapter import SubscribeOptions

from .offsets import Entry, PartitionLog
from .rebalance import COMMIT_TIMEOUT, kafka_group_id

if TYPE_CHECKING:
    from .adapter import KafkaAdapter

log = logging.getLogger("eventbus.kafka")

RUNS_PREFIX = "eventbus-runs="
# The metadata of a commit made while records past it may have started (see above).
OPEN = "eventbus-open"
# Records a careful member commits one by one after a crash, unless max_uncommitted
# says how many can be past the commit (each costs a commit round trip).
CAREFUL_RECORDS = 100


def runs_metadata(runs: int) -> str:
    """The commit metadata saying ``runs`` runs of the record at the offset started."""
    return f"{RUNS_PREFIX}{runs}"


def runs_from(metadata: str | None) -> int:
    """Runs recorded in commit metadata (0 for anything this adapter did not write)."""
    if not metadata or not metadata.startswith(RUNS_PREFIX):
        return 0
    try:
        return max(0, int(metadata[len(RUNS_PREFIX) :]))
    except ValueError:
        return 0


class RunCounter:
    """The crash-counting half of a ``KafkaSubscription``."""

    adapter: KafkaAdapter
    topic: str
    options: SubscribeOptions
    consumer: AIOKafkaConsumer
    _commit_lock: asyncio.Lock

    async def commit(self, only: set[TopicPartition] | None = None, final: bool = False) -> None:
        raise NotImplementedError

    async def _count_head_run(self, record: Any, log_: PartitionLog, entry: Entry) -> int:
        """Runs of ``record`` that started earlier and never settled (0 unless it sits at
        its partition's committed offset); records this run in the commit."""
        log_.head_checked = True
        if self.adapter.keeps_commit_metadata is False:
            return 0  # nowhere to count (warned once)
        tp = TopicPartition(record.topic, record.partition)
        committed = await self._committed(tp)
        if committed is None or committed.offset != record.offset:
            return 0  # not at the head: it was never run from a committed position
        if committed.metadata:  # open or counted: the last owner may have crashed
            log_.careful_until = record.offset + self.careful_window()
        earlier = runs_from(committed.metadata)
        async with self._commit_lock:
            try:
                await self.consumer.commit(
                    {tp: OffsetAndMetadata(record.offset, runs_metadata(earlier + 1))}
                )
            except (KafkaError, ConsumerStoppedError) as exc:
                log.warning(
                    "could not record run %d of %s/%s/%s in the group's commit (%s: "
                    "%s); a crash in this run will not be counted",
                    earlier + 1,
                    record.topic,
                    record.partition,
                    record.offset,
                    type(exc).__name__,
                    exc,
                )
                return earlier
        log_.counted = entry
        log_.committed = record.offset  # a commit of the same offset would clear the count
        if self.adapter.keeps_commit_metadata is None:
            await self._check_metadata_kept(tp, earlier + 1)
        if earlier:
            log.warning(
                "record %s/%s/%s of group %r starts its run %d: %d earlier run(s) "
                "ended without settling it (the process crashed or was killed)",
                record.topic,
                record.partition,
                record.offset,
                self.options.group,
                earlier + 1,
                earlier,
            )
        return earlier

    async def _committed(self, tp: TopicPartition) -> OffsetAndMetadata | None:
        group = kafka_group_id(self.options.group, self.topic)
        try:
            found = await asyncio.wait_for(self.adapter.group_offsets(group, [tp]), COMMIT_TIMEOUT)
        except Exception as exc:  # unknown: run it uncounted rather than hold it up
            log.debug("could not read the committed offset of %s: %s", tp, exc)
            return None
        return found.get(tp)

    async def _check_metadata_kept(self, tp: TopicPartition, runs: int) -> None:
        """Once per adapter: read the first count back. A Kafka-protocol broker that drops
        commit metadata (Tansu) cannot count runs across crashes; say so once, loudly."""
        committed = await self._committed(tp)
        if committed is None:
            return  # could not tell; try again with the next count
        kept = runs_from(committed.metadata) == runs
        self.adapter.keeps_commit_metadata = kept
        if not kept:
            log.warning(
                "Kafka at %s does not keep the metadata of committed offsets (it read back "
                "%r), where this adapter counts the runs of a record across crashes: a "
                "record whose handler kills the process is redelivered forever instead of "
                "being dead-lettered after max_attempts. Apache Kafka keeps it.",
                self.adapter.settings.masked_url,
                committed.metadata,
            )

    def careful_window(self) -> int:
        """Records after a crashed owner's commit that may have started uncounted:
        ``max_uncommitted`` when set (it bounds them), else ``CAREFUL_RECORDS`` (one
        commit round trip each; a small ``commit_every`` bounds nothing: the lag is the
        handling rate times the commit round trip), and what was handed out on top. A
        killing record further on (commits that lagged more) is reached at one record
        per restart."""
        settings = self.adapter.settings
        settled = settings.max_uncommitted or CAREFUL_RECORDS
        return settled + max(1, self.options.prefetch)

    async def commit_if_counted(self, log_: PartitionLog, entry: Entry) -> None:
        """``entry`` was just settled: if its run was counted in the commit, or it is in
        the careful window after a crash, commit past it now and wait for that, so a
        crash of the next record cannot count against it a run that finished, and a
        killing record after it is at the committed offset when it kills."""
        if log_.counted is entry:
            log_.counted = None
        elif entry.offset >= log_.careful_until or log_.revoked:
            return
        record = entry.record
        await self.commit(only={TopicPartition(record.topic, record.partition)})
