"""Which offsets of a partition may be committed: the contiguous prefix of settled records.

Deliveries of one partition may be settled out of order (up to ``prefetch`` are
out at once), but Kafka keeps a single committed offset per partition. Committing
past an unsettled record would lose it on restart, so the commit point only ever
advances over a run of settled records, in the order they were fetched (not by
offset arithmetic: compaction and transaction markers leave gaps in offsets).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False, slots=True)
class Entry:
    """One fetched record of a partition; ``done`` once settled.

    ``started`` once the subscriber began handling it (it checked ``stale``);
    ``dropped`` when its delivery was given up unstarted during a rebalance and the
    record must be handed out again if the partition comes back.
    """

    offset: int
    record: Any = None
    attempt: int | None = None
    done: bool = False
    handed_out: bool = False
    started: bool = False
    dropped: bool = False
    # Runs that started before this assignment and never settled it (eventbus_kafka.runs).
    earlier_runs: int = 0


@dataclass(eq=False)
class PartitionLog:
    """The records of one partition fetched in the current assignment, in order.

    A log belongs to one assignment: when the partition is revoked the log is
    retired (``revoked``), so a late ack of one of its records commits nothing
    for a partition this consumer no longer owns.
    """

    entries: deque[Entry] = field(default_factory=deque)
    commit_to: int | None = None
    committed: int | None = None
    revoked: bool = False
    # Between a revoke and the next assignment: no delivery of it may start, and it
    # is restored (not re-read) if the partition comes back to this member.
    suspended: bool = False
    next_offset: int | None = None
    # Fetched records that came up for handing out while suspended.
    stash: list[Any] = field(default_factory=list)
    # Crash counting (eventbus_kafka.runs): whether the first record handed out in
    # this assignment was checked against the committed offset, and the record whose
    # run is counted there until it is settled.
    head_checked: bool = False
    counted: Entry | None = None
    # After a crash (the head's commit was open): records below this offset commit
    # past themselves as soon as each is settled (eventbus_kafka.runs).
    careful_until: int = -1

    def add(self, offset: int, record: Any = None) -> Entry:
        """Track a newly fetched record (records arrive in offset order)."""
        entry = Entry(offset, record)
        self.entries.append(entry)
        self.next_offset = offset + 1
        return entry

    def settle(self, entry: Entry) -> bool:
        """Mark ``entry`` done; True when the committable offset moved forward."""
        entry.done = True
        moved = False
        while self.entries and self.entries[0].done:
            self.commit_to = self.entries.popleft().offset + 1
            moved = True
        return moved and not self.revoked

    @property
    def in_flight(self) -> int:
        """Records handed to the subscriber and not settled yet."""
        return sum(1 for e in self.entries if e.handed_out and not e.done)

    def to_commit(self) -> int | None:
        """The offset to commit now, or None when nothing new is committable."""
        if self.revoked or self.commit_to is None or self.commit_to == self.committed:
            return None
        return self.commit_to
