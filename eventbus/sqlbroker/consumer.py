"""A subscription of a SQL broker: one consumer of a group, claiming with leases.

(Over 400 lines on purpose: one subscription whose fetch, lease and settle steps share its state.)

- **Fetching** is one transaction: lease the group's claimable pending rows (due,
  and each its key's head), move new messages of the topic's log into the group's
  pending rows when that was not enough (advancing the group's position), lease
  again, read the bodies, and learn when the group's next row is due. Never more
  than the prefetch room; a fetch waits until a quarter of the prefetch is free,
  so a busy consumer does not run a transaction per settled message.
- **Waking**: a publish in this process wakes the topic's subscriptions at once;
  another process's publish arrives through the hub's waker (SQLite: the database's
  ``data_version``; PostgreSQL: ``LISTEN``); a delay or another consumer's lease
  ending wakes a timer set from the table; an idle subscription looks anyway every
  ``idle_poll``.
- **Leases**: a background task renews what this consumer holds every third of
  ``lease``. A message whose lease it could not renew in time (the database out of
  reach, the process paused) may be taken by another consumer: it is *stale*, and
  the bus drops it unrun if it has not started.
- **Acking** settles at once; the consumer's next claim deletes the acked rows in its
  own transaction (or, when no claim comes within 20 ms, a transaction of
  their own), so handlers never wait for a commit each; until the delete commits
  the row stays leased to this consumer and renewed, so a delete that fails is
  tried again, and one never made (the process died) means a redelivery after the
  lease, never a loss. A **nack** makes the row due again after the delay before it
  returns (batched with other nacks); a nack that fails lets the message go (no
  renewal, no prefetch slot), so its lease ends and the group gets it again.
- ``close()`` hands every unsettled message back at once; those never handed to a
  handler do not count as a delivery.
- A group deleted underneath is created again at the position this consumer had
  reached, so what was published meanwhile is still delivered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.errors import BrokerConnectionError, ConnectionLostError, TopicNotFoundError
from eventbus.patterns.sql import DatabaseError
from eventbus.sqlbroker import codec
from eventbus.sqlbroker.acks import Acks
from eventbus.sqlbroker.queries import BUSY, REFILL_BATCH

if TYPE_CHECKING:
    from eventbus.sqlbroker.adapter import SqlAdapter
    from eventbus.sqlbroker.hub import Hub

log = logging.getLogger("eventbus.sqlbroker")

BUSY_RETRY = 0.02
"""Seconds before fetching again when another consumer was moving the group's messages."""


class SqlDelivery(Delivery):
    """One claimed message: settled through its subscription."""

    __slots__ = ("_counted", "_gid", "_id", "_lost", "_sub")
    stable_id = True  # message_id is the row id: the same on every redelivery

    def __init__(
        self,
        sub: SqlSubscription,
        gid: int,
        message_id: int,
        attempt: int,
        headers: str,
        body: bytes,
    ) -> None:
        envelope, error, raw_headers = codec.decode(headers, body)
        super().__init__(
            topic=sub.topic,
            group=sub.group,
            envelope=envelope,
            attempt=attempt,
            message_id=str(message_id),
            raw=None if envelope else body,
            decode_error=error,
            raw_headers=raw_headers,
        )
        self._sub = sub
        self._gid = gid
        self._id = message_id
        self._lost = False
        self._counted = False  # handed out and holding a prefetch slot

    @property
    def stale(self) -> bool:
        """True once its subscription closed or its lease was lost: another consumer may
        have it, so the bus must not start it here."""
        return self._lost or self._sub.closed

    async def _ack(self) -> None:
        self._sub.acknowledge(self)

    async def _reject(self) -> None:
        # The bus's dead-letter step already stored it on <topic>.<group>.dlq.
        self._sub.acknowledge(self)

    async def _nack(self, delay: float) -> None:
        await self._sub.settle(self, "nack", delay)


class SqlSubscription(Subscription):
    """One consumer of ``options.group`` on ``topic``."""

    def __init__(
        self,
        adapter: SqlAdapter,
        hub: Hub,
        topic: str,
        options: SubscribeOptions,
        gid: int,
        position: int,
    ) -> None:
        self.adapter = adapter
        self.hub = hub
        self.topic = topic
        self.group = options.group
        self.prefetch = max(1, options.prefetch)
        self.gid = gid
        self.position = position  # where to create the group again if it is deleted
        # Shown in the owner column of what this consumer holds: client_name, else the host.
        name = adapter.settings.client_name or socket.gethostname()
        self.owner = f"{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.lease = hub.settings.lease
        # Fetch once half the prefetch is free: fewer, fuller transactions, while the
        # other half keeps the handlers busy meanwhile.
        self._low = max(1, self.prefetch // 2)
        self._buffer: deque[SqlDelivery] = deque()
        self._held: dict[int, SqlDelivery] = {}  # leased to us, not settled (buffer + out)
        self._acks = Acks(self)
        self._out = 0
        self._closed = False
        self._dirty = True  # something may be claimable: fetch when there is room
        self._event = asyncio.Event()
        self._due: float | None = None  # loop time of the group's next due row
        self._keeper: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        self.hub.watch(self.topic, self.wake)
        self._keeper = asyncio.create_task(self._keep_leases())

    def wake(self) -> None:
        """Something may have become claimable: fetch when there is room."""
        self._dirty = True
        self._event.set()

    # -- iteration ----------------------------------------------------------------------------

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        loop = asyncio.get_running_loop()
        while not self._closed:
            if self._buffer and self._out < self.prefetch:
                delivery = self._buffer.popleft()
                if delivery.stale:
                    continue
                delivery._counted = True
                self._out += 1
                yield delivery
                continue
            room = self.prefetch - len(self._held)
            if self._dirty and room >= self._low:
                self._dirty = False
                if await self._fetch(room):
                    continue
            self._event.clear()
            if self._closed or (self._dirty and room >= self._low):
                continue
            timeout = self.hub.settings.idle_poll
            if self._due is not None:
                timeout = min(timeout, max(0.0, self._due - loop.time()))
            try:
                await asyncio.wait_for(self._event.wait(), timeout)
            except TimeoutError:
                self._dirty, self._due = True, None

    async def _fetch(self, room: int) -> int:
        # In a task of its own: cancelling the iteration never loses what a committed
        # claim took (the task still adopts it, and hands it back if closed by then).
        task = asyncio.ensure_future(self._claim(room))
        task.add_done_callback(_retrieved)
        try:
            got = await asyncio.shield(task)
        except DatabaseError as exc:
            raise ConnectionLostError(
                f"fetching from topic {self.topic!r} as group {self.group!r} on "
                f"{self.hub.settings.masked_url} failed: {exc}; subscribing again"
            ) from exc
        if got >= room:
            self._dirty = True  # a full fetch: more may be waiting
        return got

    async def _claim(self, room: int) -> int:
        hub, sql = self.hub, self.hub.sql
        gone = busy = False
        due: float | None = None
        gid = self.gid
        acks = self._acks.take()
        try:
            async with hub.db.transaction() as tx:
                # The acks of this consumer since the last claim commit with it: one
                # transaction (one fsync) for both.
                lost = await self._acks.delete(tx, acks)
                claimed = await sql.claim(tx, gid, self.owner, room, self.lease)
                if len(claimed) < room:
                    moved = await sql.refill(
                        tx, gid, self.topic, self.group, max(room, REFILL_BATCH)
                    )
                    if moved is None:
                        gone = True
                    elif moved == BUSY:
                        busy = True
                    elif moved:
                        self.position = moved
                        claimed += await sql.claim(
                            tx, gid, self.owner, room - len(claimed), self.lease
                        )
                vanished = [m.id for m in claimed if m.body is None]
                if vanished:
                    # Retention deleted them while a refill was moving them (a group far
                    # behind): nothing is left to deliver.
                    await sql.forget(tx, gid, vanished)
                    claimed = [m for m in claimed if m.body is not None]
                    log.warning(
                        "%d message(s) of %s/%s were deleted by retention before "
                        "the group took them",
                        len(vanished),
                        self.topic,
                        self.group,
                    )
                if not claimed and not gone:
                    # Only when idle: a consumer that got work fetches again as it
                    # settles it, so a timer would not matter.
                    due = await sql.next_due(tx, gid, self.owner)
        except BaseException:
            self._acks.restore(acks)
            raise
        self._acks.done(acks, lost)
        now = asyncio.get_running_loop().time()
        if busy:
            self._due = now + BUSY_RETRY
        elif due is not None:
            self._due = now + due
        else:
            self._due = None
        if gone:
            await self._recreate_group()
        adopted = [
            SqlDelivery(self, gid, m.id, m.attempts, m.headers or "", m.body or b"")
            for m in claimed
        ]
        if self._closed:  # closed while this claim ran: hand it all back
            await self._release([], [d._id for d in adopted], gid)
            return 0
        for delivery in adopted:
            self._held[delivery._id] = delivery
            self._buffer.append(delivery)
        return len(adopted)

    async def _recreate_group(self) -> None:
        """The group was deleted underneath: create it again where this consumer had got
        to, so nothing published while it was gone is skipped. What the deleted group
        held (its pending rows) went with it; messages of it still here are run, and
        settling them is a no-op."""
        log.warning(
            "group %s of topic %s is gone on %s (deleted underneath); creating it "
            "again at position %d",
            self.group,
            self.topic,
            self.hub.settings.masked_url,
            self.position,
        )
        async with self.hub.db.transaction() as tx:
            self.gid, _ = await self.hub.sql.join(tx, self.topic, self.group, self.position)
        self._held.clear()  # nothing of the old group can be renewed any more
        self._dirty = True

    # -- settling -------------------------------------------------------------------------------

    def acknowledge(self, delivery: SqlDelivery) -> None:
        """Settle ``delivery`` now; its row is deleted with the next claim, or alone soon
        after (see :mod:`eventbus.sqlbroker.acks`)."""
        self._held.pop(delivery._id, None)
        self._acks.add(delivery._id, delivery._gid)
        if delivery._counted:
            delivery._counted = False
            self._out -= 1
        self.wake()

    async def settle(self, delivery: SqlDelivery, how: str, delay: float) -> None:
        """Nack ``delivery`` (``how="nack"``); a failure lets it go (see the module docs)."""
        self._held.pop(delivery._id, None)  # never renewed again, whatever happens
        try:
            done = await self.hub.settler.submit(
                (how, delivery._gid, delivery._id, self.owner, delay)
            )
        except DatabaseError as exc:
            raise BrokerConnectionError(
                f"could not {how} message {delivery._id} of topic {self.topic!r} group "
                f"{self.group!r} on {self.hub.settings.masked_url}: {exc}; it comes back "
                f"once its lease ({self.lease:g}s) ends"
            ) from exc
        finally:
            if delivery._counted:
                delivery._counted = False
                self._out -= 1
            self.wake()
        if not done:
            log.info(
                "%s of message %s on %s/%s came after its lease ended: another "
                "consumer of the group may run it again",
                how,
                delivery._id,
                self.topic,
                self.group,
            )

    # -- leases ---------------------------------------------------------------------------------

    async def _keep_leases(self) -> None:
        renewed = time.monotonic()
        while not self._closed:
            await asyncio.sleep(self.lease / 3)
            ids = [*self._held, *self._acks.ids(self.gid)]
            started = time.monotonic()
            if not ids:
                renewed = started
                continue
            try:
                async with self.hub.db.transaction() as tx:
                    kept = await self.hub.sql.extend(tx, self.gid, self.owner, ids, self.lease)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if started - renewed < self.lease:
                    log.info(
                        "renewing the leases of %d message(s) on %s/%s failed (%s); trying again",
                        len(ids),
                        self.topic,
                        self.group,
                        exc,
                    )
                    continue
                kept = set()
                log.warning(
                    "the leases of %d message(s) on %s/%s could not be renewed for "
                    "%.1fs (%s): other consumers may take them now",
                    len(ids),
                    self.topic,
                    self.group,
                    started - renewed,
                    exc,
                )
            else:
                renewed = started
            for mid in ids:
                if mid not in kept:
                    self._lose(mid)

    def _lose(self, mid: int) -> None:
        delivery = self._held.pop(mid, None)
        if delivery is not None:
            delivery._lost = True
            self.wake()

    # -- looking ----------------------------------------------------------------------------------

    async def backlog(self) -> int | None:
        """Messages of the group that could go out now: new ones on the topic after the
        group's position (routed to it or to every group) plus pending ones that are due
        and at the head of their key (up to 1000 each). In flight, delayed and key-held
        messages are not counted."""
        try:
            async with self.hub.db.transaction() as tx:
                count = await self.hub.sql.backlog(tx, self.gid, self.topic, self.group)
        except DatabaseError as exc:
            raise BrokerConnectionError(
                f"cannot read the backlog of group {self.group!r} of topic {self.topic!r} on "
                f"{self.hub.settings.masked_url}: {exc}"
            ) from exc
        if count is None:
            raise TopicNotFoundError(
                f"group {self.group!r} of topic {self.topic!r} no longer exists on "
                f"{self.hub.settings.masked_url} (deleted?)"
            )
        return count

    # -- closing --------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop fetching and hand every unsettled message back to the group at once."""
        if self._closed:
            return
        self._closed = True
        self._event.set()
        self.hub.unwatch(self.topic, self.wake)
        await self._acks.drain(5.0)  # acked work is not handed back: its deletes first
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        out = [mid for mid, d in self._held.items() if d._counted]
        buffered = [mid for mid, d in self._held.items() if not d._counted]
        self._held.clear()
        self._buffer.clear()
        try:
            await asyncio.wait_for(self._release(out, buffered, self.gid), 5.0)
        except Exception as exc:  # their leases end anyway; then the group gets them
            log.info(
                "could not hand %d message(s) of %s/%s back at close (%s: %s); they "
                "come back when their lease ends",
                len(out) + len(buffered),
                self.topic,
                self.group,
                type(exc).__name__,
                exc,
            )
        self.adapter.forget(self)

    async def _release(self, out: list[int], buffered: list[int], gid: int) -> None:
        if not out and not buffered:
            return
        async with self.hub.db.transaction() as tx:
            await self.hub.sql.release(tx, gid, self.owner, out, uncount=False)
            await self.hub.sql.release(tx, gid, self.owner, buffered, uncount=True)
            await self.hub.touch(tx, self.topic)
        self.hub.wake(self.topic)


def _retrieved(task: asyncio.Task[int]) -> None:
    """A claim whose iteration was cancelled (the subscription closing) may still fail;
    nobody waits for it then, so its error is logged here, not as never retrieved."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("a claim ended after its subscription stopped waiting: %s", task.exception())


__all__ = ["SqlDelivery", "SqlSubscription"]
