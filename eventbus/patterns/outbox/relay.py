"""The relay: publishes outbox rows to the broker in order per stream, then marks them sent.

A batch is three steps, and only the first and last touch the database, each in
one short transaction:

1. **claim**: take the oldest unsent rows of streams nobody else holds and
   write this batch's claim on them (``claimed_by``, ``claimed_until``: a lease);
2. **publish** them, outside any transaction, so a broker that does not answer
   holds no lock the application's own writes would wait on;
3. **settle**: mark the published rows sent, park the ones the broker refused
   for good, and release the claim on the rest.

Several relays may run against one database, on PostgreSQL and on SQLite:

- a stream (a partition key, else a topic) is taken whole from its oldest unsent
  row, and only when none of its rows is parked or under a live claim, so no row
  is published by two live relays and each stream stays in order, while
  different streams go out in parallel. On PostgreSQL the claim locks the head
  of each stream it takes with ``FOR UPDATE SKIP LOCKED`` (relays claiming at the
  same instant skip each other); on SQLite the claim is one ``BEGIN IMMEDIATE``;
- a relay stops publishing a batch once 80% of its ``lease`` has passed (every
  broker call is bounded by what is left), so it has settled before anyone may
  take its rows over;
- a relay that dies leaves its claim: the rows go out again once the lease
  expired (at-least-once; consumers deduplicate by event id with the bus's
  idempotency middleware or an :class:`~eventbus.patterns.inbox.Inbox`). A relay
  that is stopped or fails releases its claim at once.

Leases compare the clocks of the relays' hosts: keep them in sync to well within
a fifth of the lease.

A row the broker refuses for good (:func:`~eventbus.errors.is_permanent_refusal`:
too large, unknown topic, an invalid topic name, undecodable...) is parked with
its stream behind it; other failures (broker down, no confirmation in time,
database gone) are logged, shown by :meth:`OutboxRelay.health`, and retried with
backoff; the loop does not die of them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from itertools import groupby
from typing import Any

from eventbus.backoff import Backoff
from eventbus.bus import EventBus
from eventbus.codec import decode_structured
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError, PublishError, is_permanent_refusal
from eventbus.patterns.health import RelayHealth, RelayState
from eventbus.patterns.outbox import claims
from eventbus.patterns.outbox.store import Outbox
from eventbus.patterns.sql import Row
from eventbus.tasks import stop_task

log = logging.getLogger("eventbus.outbox")


class OutboxRelay:
    """Publishes an :class:`Outbox`'s rows through ``bus``'s adapter.

    The bus must be started (``async with bus``); the relay publishes the stored
    envelopes as they are, without the bus's publish middleware (it ran when
    they were written). Run it with ``async with relay:`` (or :meth:`start` /
    :meth:`stop`), or call :meth:`publish_pending` yourself.

    - ``batch_size``: rows per transaction.
    - ``poll_interval``: seconds between looks at an idle table (a unit of work
      of the same :class:`Outbox` object wakes it at once).
    - ``retention``: seconds sent rows are kept before :meth:`cleanup` deletes
      them (run every ``cleanup_interval`` seconds by the loop).
    - ``backoff``: waits after a failed batch.
    - ``streams_per_batch``: streams (keys) one PostgreSQL batch takes at most,
      leaving the others to other relays.
    - ``lease``: seconds a batch's claim on its rows lasts. The relay publishes for
      at most 80% of it (each broker call bounded by what is left, and by the bus's
      ``publish_timeout``); rows claimed by a relay that died go out again once it
      expired. Keep it above ``publish_timeout``.
    """

    def __init__(
        self,
        outbox: Outbox,
        bus: EventBus,
        *,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        retention: float = 7 * 24 * 3600.0,
        cleanup_interval: float = 60.0,
        backoff: Backoff | None = None,
        name: str = "outbox-relay",
        streams_per_batch: int = 32,
        lease: float = 60.0,
    ) -> None:
        if (
            batch_size < 1
            or poll_interval <= 0
            or retention < 0
            or streams_per_batch < 1
            or not lease > 0
        ):
            raise ConfigurationError(
                "OutboxRelay needs batch_size >= 1, poll_interval > 0, retention >= 0, "
                f"streams_per_batch >= 1 and lease > 0; got {batch_size}, {poll_interval}, "
                f"{retention}, {streams_per_batch}, {lease}"
            )
        self.lease = lease
        self.outbox = outbox
        self.bus = bus
        self.batch_size = batch_size
        self.streams_per_batch = streams_per_batch
        self.poll_interval = poll_interval
        self.retention = retention
        self.cleanup_interval = cleanup_interval
        self.backoff = backoff or Backoff(initial=0.1, max_delay=10.0)
        self.name = name
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._state: RelayState = "idle"
        self._published = 0
        self._failures = 0
        self._last_error: str | None = None
        self._last_success: float | None = None

    # -- one batch ---------------------------------------------------------------------

    async def publish_pending(self) -> int:
        """Publish one batch of unsent rows and mark them sent; returns how many.

        Claims the rows (one short transaction), publishes them outside any
        transaction, then marks them sent (another). Raises what publishing or the
        database raised; the rows published before that are still marked sent, the
        others are released for the next call (of any relay). A row the broker
        refuses for good is parked instead, with its stream behind it: see
        :meth:`Outbox.failed`.
        """
        token = uuid.uuid4().hex
        started = time.monotonic()
        rows = await claims.claim(
            self.outbox.db,
            self.outbox.table,
            token,
            self.lease,
            self.batch_size,
            self.streams_per_batch,
        )
        if not rows:
            return 0
        # Stop publishing well before the lease ends: another relay may take the rows
        # over then, and must find them settled.
        deadline = started + 0.8 * self.lease
        sent: list[Any] = []
        refused: dict[Any, str] = {}
        try:
            await self._publish(rows, deadline, sent, refused)
        finally:
            # Also when publishing failed or this task is being cancelled: what went
            # out is marked, the rest released now rather than after the lease.
            await claims.settle(self.outbox.db, self.outbox.table, token, sent, refused)
            self._published += len(sent)
        return len(sent)

    async def _publish(
        self, rows: Sequence[Row], deadline: float, sent: list[Any], refused: dict[Any, str]
    ) -> None:
        """Publish ``rows`` in order, adding each to ``sent`` once the broker confirmed
        it, or to ``refused`` (``seq -> error``) when the broker refused it for good;
        the rows of a refused row's stream behind it are neither (they wait, so the
        stream keeps its order). Any other failure is raised."""
        held: set[str] = set()
        # Consecutive rows of one topic go in one call, keeping the rows' order.
        for topic, group in groupby(rows, key=lambda row: str(row[1])):
            batch = [row for row in group if row[3] not in held]
            try:
                await self._send(
                    topic, [decode_structured(bytes(row[2])) for row in batch], deadline
                )
                sent += [row[0] for row in batch]
            except Exception as exc:
                if not is_permanent_refusal(exc):
                    raise
                # One of them cannot ever go out: find it, one row at a time.
                await self._one_by_one(topic, batch, deadline, sent, refused, held)

    async def _one_by_one(
        self,
        topic: str,
        batch: list[Row],
        deadline: float,
        sent: list[Any],
        refused: dict[Any, str],
        held: set[str],
    ) -> None:
        for seq, _, stored, stream in batch:
            if stream in held:
                continue
            try:
                await self._send(topic, [decode_structured(bytes(stored))], deadline)
                sent.append(seq)
            except Exception as exc:
                if not is_permanent_refusal(exc):
                    raise
                refused[seq] = f"{type(exc).__name__}: {exc}"
                held.add(stream)
                log.error(
                    "%s: outbox row %s (topic %r, stream %r) was refused for good "
                    "(%s); it is parked and its stream waits behind it: fix it and "
                    "call Outbox.retry_failed(%s), or Outbox.discard(%s)",
                    self.name,
                    seq,
                    topic,
                    stream,
                    refused[seq],
                    seq,
                    seq,
                )

    async def _send(self, topic: str, envelopes: list[Envelope], deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PublishError(
                f"outbox relay {self.name}: the claim on this batch is nearly over "
                f"(lease {self.lease:g}s); {len(envelopes)} row(s) on topic {topic!r} are "
                "released unsent and taken again by the next batch"
            )
        timeout = min(self.bus.publish_timeout, left)
        try:
            await asyncio.wait_for(self.bus.adapter.publish(topic, envelopes), timeout)
        except TimeoutError as exc:
            raise PublishError(
                f"outbox relay: the broker did not confirm {len(envelopes)} message(s) "
                f"on topic {topic!r} within {timeout:.3g}s; they stay unsent and are retried"
            ) from exc

    async def cleanup(self) -> int:
        """Delete rows sent more than ``retention`` seconds ago; returns how many."""
        async with self.outbox.db.transaction() as tx:
            return int(
                await tx.execute(
                    f"DELETE FROM {self.outbox.table} WHERE sent_at IS NOT NULL AND sent_at < $1",
                    time.time() - self.retention,
                )
            )

    # -- the loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Publish until cancelled: batches back to back while rows wait, a look every
        ``poll_interval`` (or at once when a unit of work commits) when idle, backoff
        after a failure, cleanup every ``cleanup_interval``."""
        next_cleanup = time.monotonic()
        self._state = "running"
        while not self._stopping.is_set():
            try:
                if time.monotonic() >= next_cleanup:
                    removed = await self.cleanup()
                    if removed:
                        log.debug("%s: removed %d sent row(s)", self.name, removed)
                    next_cleanup = time.monotonic() + self.cleanup_interval
                self.outbox.written.clear()
                count = await self.publish_pending()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._failed(exc)
                continue
            if self._failures:
                log.info(
                    "%s: publishing again after %d failed attempt(s)", self.name, self._failures
                )
            self._failures, self._last_error = 0, None
            self._last_success = time.time()
            self._state = "running"
            if count < self.batch_size:
                await self._idle()

    async def _failed(self, exc: Exception) -> None:
        self._failures += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._state = "backing_off"
        delay = self.backoff.delay(self._failures)
        # Every failure is logged; the first and every tenth with the traceback.
        log.warning(
            "%s: batch failed (%s); attempt %d, retrying in %.2fs. Rows stay unsent "
            "until a batch succeeds",
            self.name,
            self._last_error,
            self._failures,
            delay,
            exc_info=exc if self._failures % 10 == 1 else None,
        )
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait([stopping], timeout=delay)
        finally:
            stopping.cancel()

    async def _idle(self, seconds: float | None = None) -> None:
        """Wait ``seconds`` (default ``poll_interval``), less when rows are written or
        the relay is asked to stop."""
        waits = [
            asyncio.ensure_future(self.outbox.written.wait()),
            asyncio.ensure_future(self._stopping.wait()),
        ]
        try:
            await asyncio.wait(
                waits,
                timeout=self.poll_interval if seconds is None else seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waits:
                waiter.cancel()

    async def start(self) -> None:
        """Run :meth:`run` in a background task (idempotent)."""
        if self._task is not None and not self._task.done():
            return
        self._stopping.clear()
        self._task = asyncio.create_task(self.run(), name=self.name)
        self._task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or (self._stopping.is_set() and task.exception() is None):
            self._state = "stopped"
            return
        exc = task.exception()
        self._state = "dead"
        self._last_error = f"{type(exc).__name__}: {exc}" if exc else "the loop returned"
        log.error(
            "%s: the relay loop ended (%s); outbox rows are no longer published. Restart the relay",
            self.name,
            self._last_error,
            exc_info=exc,
        )

    async def stop(self, timeout: float = 10.0) -> None:
        """Let the batch in flight finish (up to ``timeout`` seconds, then cancel it:
        what it published is marked sent, the rest released for the next relay), and
        end the loop."""
        task, self._task = self._task, None
        self._stopping.set()
        # A loop that died was logged by _ended; stopping does not raise it again.
        await stop_task(task, grace=timeout)
        self._state = "stopped"

    def health(self) -> RelayHealth:
        """Whether the relay is publishing, and the last error when it is not."""
        running = self._task is not None and not self._task.done()
        ok = running and self._failures == 0
        return RelayHealth(
            ok, self._state, self._published, self._failures, self._last_error, self._last_success
        )

    async def __aenter__(self) -> OutboxRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


__all__ = ["OutboxRelay", "RelayHealth", "RelayState"]
