"""A consumer's acks: settled at once, their rows deleted with its next claim or alone.

Why not a commit per ack: a handler would wait for a transaction (an fsync on
SQLite) each time, and a group could never have more acks in one transaction than
it has workers. Instead an ack is recorded here and the consumer's next claim
deletes the acked rows in its own transaction; when no claim comes within
:data:`ACK_DELAY` (the consumer is idle, or full of slow work), the flusher deletes
them in a transaction of their own.

Until the delete commits, the rows stay leased to the consumer and renewed with
what it holds (:meth:`Acks.ids`), so a delete that fails is tried again and one
never made (the process died) means a redelivery after the lease, never a loss.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from eventbus.patterns.sql import Transaction

if TYPE_CHECKING:
    from eventbus.sqlbroker.consumer import SqlSubscription

log = logging.getLogger("eventbus.sqlbroker")

ACK_DELAY = 0.02
"""Seconds an ack waits for a claim to take its delete along before it goes alone."""


class Acks:
    """The acked rows of one subscription (message id -> group id) on their way out."""

    def __init__(self, owner: SqlSubscription) -> None:
        self.owner = owner
        self.pending: dict[int, int] = {}  # acked, not yet in a delete
        self.deleting: dict[int, int] = {}  # in a delete not yet committed
        self._task: asyncio.Task[None] | None = None

    def add(self, message_id: int, gid: int) -> None:
        """Record an ack; the flusher starts if no claim takes it along in time."""
        self.pending[message_id] = gid
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())

    def ids(self, gid: int) -> list[int]:
        """The acked rows of group ``gid`` still to renew (their delete is not committed)."""
        return [m for acks in (self.pending, self.deleting) for m, g in acks.items() if g == gid]

    def take(self) -> dict[int, int]:
        """The acks not yet in a transaction, for one about to start."""
        acks, self.pending = self.pending, {}
        self.deleting.update(acks)
        return acks

    def restore(self, acks: dict[int, int]) -> None:
        """The transaction with ``acks`` failed: they wait for the next one."""
        for mid in acks:
            self.deleting.pop(mid, None)
        self.pending.update(acks)

    async def delete(self, tx: Transaction, acks: dict[int, int]) -> int:
        """Delete the acked rows in ``tx``; returns how many the consumer no longer held."""
        by_group: dict[int, list[int]] = {}
        for mid, gid in acks.items():
            by_group.setdefault(gid, []).append(mid)
        done = 0
        sub = self.owner
        for gid, ids in by_group.items():
            done += len(await sub.hub.sql.ack(tx, gid, sub.owner, ids))
        return len(acks) - done

    def done(self, acks: dict[int, int], lost: int) -> None:
        """``acks`` committed; ``lost`` of them came after their lease ended."""
        for mid in acks:
            self.deleting.pop(mid, None)
        if lost:
            log.info(
                "%d ack(s) on %s/%s came after the lease ended: another consumer of "
                "the group may run those messages again",
                lost,
                self.owner.topic,
                self.owner.group,
            )

    async def _flush(self) -> None:
        """Delete acked rows no claim took along."""
        sub = self.owner
        failures = 0
        while self.pending:
            await asyncio.sleep(ACK_DELAY)  # a claim may take them along meanwhile
            if not self.pending:
                return
            acks = self.take()
            try:
                async with sub.hub.db.transaction() as tx:
                    lost = await self.delete(tx, acks)
            except asyncio.CancelledError:
                self.restore(acks)
                raise
            except Exception as exc:  # kept and renewed meanwhile: tried again
                self.restore(acks)
                failures += 1
                if sub.closed:
                    # Nobody renews them any more: their leases end and the group gets
                    # them again (at-least-once); retrying for ever would leak this task.
                    log.info(
                        "%d ack(s) of %s/%s after close could not be written (%s); "
                        "those messages come back when their lease ends",
                        len(self.pending),
                        sub.topic,
                        sub.group,
                        exc,
                    )
                    self.pending.clear()
                    return
                log.log(
                    logging.WARNING if failures == 3 else logging.DEBUG,
                    "deleting %d acked message(s) of %s/%s failed (%s: %s); trying again",
                    len(acks),
                    sub.topic,
                    sub.group,
                    type(exc).__name__,
                    exc,
                )
                await asyncio.sleep(min(2.0, 0.05 * 2 ** min(failures, 6)))
                continue
            failures = 0
            self.done(acks, lost)

    async def drain(self, timeout: float) -> None:
        """At close: let the acks so far commit (up to ``timeout``), so acked work is not
        handed back with what the consumer still held."""
        task = self._task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except Exception as exc:
            log.info(
                "%d ack(s) of %s/%s not committed at close (%s); those messages come "
                "back when their lease ends",
                len(self.pending),
                self.owner.topic,
                self.owner.group,
                exc,
            )
            task.cancel()
