"""The relay: publishes outbox rows to the broker in order per stream, then marks them sent.

One batch is one database transaction: lock the rows, publish them, mark them
sent, commit. A relay that dies anywhere before the commit leaves its rows
unsent and unlocked, so they are published again (at-least-once; consumers
deduplicate by event id with the bus's idempotency middleware or an
:class:`~eventbus.patterns.inbox.Inbox`).

Several relays may run against one database:

- PostgreSQL: a relay locks the oldest unsent row of each stream it takes with
  ``FOR UPDATE SKIP LOCKED``, then the rows behind it. Another relay skips a
  locked head and never takes a row whose stream has an older unsent row, so no
  row is published twice by two live relays and each stream stays in order,
  while different streams go out in parallel.
- SQLite: a batch is a ``BEGIN IMMEDIATE`` transaction, so relays take turns
  (SQLite has one writer); keep one relay per SQLite database.

Failures (broker down, database gone) are logged, shown by :meth:`OutboxRelay.health`,
and retried with backoff; the loop does not die of them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Literal

from eventbus.backoff import Backoff
from eventbus.bus import EventBus
from eventbus.codec import decode_structured
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError, DecodeError, MessageTooLargeError, PublishError
from eventbus.patterns.outbox.store import Outbox
from eventbus.patterns.sql import Row, Transaction

log = logging.getLogger("eventbus.outbox")

RelayState = Literal["idle", "running", "backing_off", "stopped", "dead"]


@dataclass(frozen=True, slots=True)
class RelayHealth:
    """What :meth:`OutboxRelay.health` reports: ``ok`` unless the last batch failed
    or the loop is not running."""

    ok: bool
    state: RelayState
    published: int
    consecutive_failures: int
    last_error: str | None
    last_success: float | None


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
    ) -> None:
        if batch_size < 1 or poll_interval <= 0 or retention < 0 or streams_per_batch < 1:
            raise ConfigurationError(
                "OutboxRelay needs batch_size >= 1, poll_interval > 0, retention >= 0 and "
                f"streams_per_batch >= 1; got {batch_size}, {poll_interval}, {retention}, "
                f"{streams_per_batch}"
            )
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

        Raises what publishing or the database raised; the batch's rows stay
        unsent and are taken again by the next call (of any relay). A row the
        broker refuses for good (too large, undecodable) is parked instead, with
        its stream behind it: see :meth:`Outbox.failed`.
        """
        async with self.outbox.db.transaction() as tx:
            rows = await self._claim(tx)
            if not rows:
                return 0
            sent, refused = await self._publish(rows)
            await self._mark_sent(tx, sent)
            for seq, error in refused.items():
                await tx.execute(f"UPDATE {self.outbox.table} SET failed_at = $1, error = $2 "
                                 "WHERE seq = $3", time.time(), error, seq)
        self._published += len(sent)
        return len(sent)

    async def _claim(self, tx: Transaction) -> list[Row]:
        t = self.outbox.table
        if tx.dialect == "sqlite":
            # BEGIN IMMEDIATE already made this the only writer.
            return await tx.fetch(
                f"SELECT seq, topic, envelope, stream FROM {t} WHERE sent_at IS NULL AND "
                f"stream NOT IN (SELECT stream FROM {t} WHERE sent_at IS NULL AND "
                "failed_at IS NOT NULL) ORDER BY seq LIMIT $1", self.batch_size)
        # The head (oldest unsent row) of each stream not held by a parked row,
        # oldest streams first ...
        heads = await tx.fetch(
            f"SELECT min(seq) FROM {t} WHERE sent_at IS NULL GROUP BY stream "
            "HAVING count(failed_at) = 0 ORDER BY 1 LIMIT $1", self.batch_size)
        if not heads:
            return []
        # ... locked unless another relay holds it; a head that got sent meanwhile
        # fails the re-checked WHERE and is left out ...
        locked = await tx.fetch(
            f"SELECT stream FROM {t} WHERE seq = ANY($1::bigint[]) AND sent_at IS NULL "
            "ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED", [h[0] for h in heads],
            self.streams_per_batch)
        if not locked:
            return []
        # ... then the rows of the streams whose head we hold, oldest first: a prefix
        # of each such stream, which no other relay takes while we hold its head.
        return await tx.fetch(
            f"SELECT seq, topic, envelope, stream FROM {t} WHERE stream = ANY($1::text[]) "
            "AND sent_at IS NULL ORDER BY seq LIMIT $2 FOR UPDATE",
            [s[0] for s in locked], self.batch_size)

    async def _publish(self, rows: Sequence[Row]) -> tuple[list[Any], dict[Any, str]]:
        """Publish ``rows`` in order. Returns the rows sent and those the broker
        refused for good (``seq -> error``); the rows of a refused row's stream
        behind it are neither (they wait, so the stream keeps its order)."""
        sent: list[Any] = []
        refused: dict[Any, str] = {}
        held: set[str] = set()
        # Consecutive rows of one topic go in one call, keeping the rows' order.
        for topic, group in groupby(rows, key=lambda row: str(row[1])):
            batch = [row for row in group if row[3] not in held]
            try:
                await self._send(topic, [decode_structured(bytes(row[2])) for row in batch])
                sent += [row[0] for row in batch]
            except (MessageTooLargeError, DecodeError):
                # One of them cannot ever go out: find it, one row at a time.
                for seq, _, stored, stream in batch:
                    if stream in held:
                        continue
                    try:
                        await self._send(topic, [decode_structured(bytes(stored))])
                        sent.append(seq)
                    except (MessageTooLargeError, DecodeError) as exc:
                        refused[seq] = f"{type(exc).__name__}: {exc}"
                        held.add(stream)
                        log.error(
                            "%s: outbox row %s (topic %r, stream %r) was refused for good "
                            "(%s); it is parked and its stream waits behind it: fix it and "
                            "call Outbox.retry_failed(%s), or Outbox.discard(%s)",
                            self.name, seq, topic, stream, refused[seq], seq, seq)
        return sent, refused

    async def _send(self, topic: str, envelopes: list[Envelope]) -> None:
        timeout = self.bus.publish_timeout
        try:
            await asyncio.wait_for(self.bus.adapter.publish(topic, envelopes), timeout)
        except TimeoutError as exc:
            raise PublishError(
                f"outbox relay: the broker did not confirm {len(envelopes)} message(s) "
                f"on topic {topic!r} within {timeout}s; they stay unsent and are retried"
            ) from exc

    async def _mark_sent(self, tx: Transaction, seqs: list[Any]) -> None:
        t, now = self.outbox.table, time.time()
        if tx.dialect == "postgres":
            await tx.execute(f"UPDATE {t} SET sent_at = $1 WHERE seq = ANY($2::bigint[])",
                             now, seqs)
        else:
            await tx.execute(f"UPDATE {t} SET sent_at = $1 WHERE seq IN "
                             "(SELECT value FROM json_each($2))", now, json.dumps(seqs))

    async def cleanup(self) -> int:
        """Delete rows sent more than ``retention`` seconds ago; returns how many."""
        async with self.outbox.db.transaction() as tx:
            return int(await tx.execute(
                f"DELETE FROM {self.outbox.table} WHERE sent_at IS NOT NULL AND sent_at < $1",
                time.time() - self.retention))

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
                log.info("%s: publishing again after %d failed attempt(s)",
                         self.name, self._failures)
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
            "until a batch succeeds", self.name, self._last_error, self._failures, delay,
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
        waits = [asyncio.ensure_future(self.outbox.written.wait()),
                 asyncio.ensure_future(self._stopping.wait())]
        try:
            await asyncio.wait(waits, timeout=self.poll_interval if seconds is None else seconds,
                               return_when=asyncio.FIRST_COMPLETED)
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
        log.error("%s: the relay loop ended (%s); outbox rows are no longer published. "
                  "Restart the relay", self.name, self._last_error, exc_info=exc)

    async def stop(self, timeout: float = 10.0) -> None:
        """Let the batch in flight finish (up to ``timeout`` seconds, then cancel it:
        its rows stay unsent and go out again later), and end the loop."""
        task, self._task = self._task, None
        self._stopping.set()
        if task is not None:
            done, _ = await asyncio.wait([task], timeout=timeout)
            if not done:
                task.cancel()
            # A loop that died was logged by _ended; stopping does not raise it again.
            await asyncio.gather(task, return_exceptions=True)
        self._state = "stopped"

    def health(self) -> RelayHealth:
        """Whether the relay is publishing, and the last error when it is not."""
        running = self._task is not None and not self._task.done()
        ok = running and self._failures == 0
        return RelayHealth(ok, self._state, self._published, self._failures,
                           self._last_error, self._last_success)

    async def __aenter__(self) -> OutboxRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
