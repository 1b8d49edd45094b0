"""What the adapters of one database share in a process: its connection (SQLite) or
pool (PostgreSQL), batched writes, wake-ups, and retention.

Why shared: every bus of a service (and every conformance case) builds its own
adapter. On SQLite one connection per process turns their writes into a queue
inside the process (an asyncio lock) instead of a contest for the file's lock,
whose busy handler sleeps up to 100 ms between tries; on PostgreSQL one pool and
one ``LISTEN`` connection per process keep the server's connection count down.
A hub is found by the adapter's whole URL and its event loop, and closed when the
last adapter using it closes.

Writes are batched (:class:`Batcher`): publishes of many tasks, and the acks and
nacks of many deliveries, each become one transaction per turn (one fsync on
SQLite), so throughput does not stop at one commit per message, and each caller
still returns only once its own write committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar

from eventbus.patterns.sql import Database, Transaction
from eventbus.sqlbroker.provision import provision
from eventbus.sqlbroker.queries import Statements
from eventbus.sqlbroker.settings import SqlSettings

log = logging.getLogger("eventbus.sqlbroker")

Op = TypeVar("Op")
R = TypeVar("R")
MAX_BATCH = 500
"""Operations per transaction at most, so that one stays short."""


class Waker(Protocol):
    """How a hub hears of other processes' writes (SQLite: polling ``data_version``;
    PostgreSQL: ``LISTEN``); it calls :meth:`Hub.wake` with the topic."""

    async def start(self) -> None:
        """Begin listening; raise BrokerConnectionError if the database does not answer."""

    async def close(self) -> None:
        """Stop listening, within a bounded time."""

    async def probe(self) -> str | None:
        """``None`` when the database answers now, else what is wrong (health)."""


class Batcher(Generic[Op, R]):
    """Runs the operations submitted while a transaction is in flight as one transaction.

    ``run(tx, ops)`` returns one result per operation; a failed transaction fails
    every operation of it with the same error (nothing of it was committed).
    """

    def __init__(
        self,
        hub: Hub,
        run: Callable[[Transaction, list[Op]], Awaitable[list[R]]],
        after: Callable[[list[Op]], None] | None = None,
    ) -> None:
        self._hub = hub
        self._run = run
        self._after = after
        self._queue: list[tuple[Op, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, op: Op) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((op, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._queue:
            await asyncio.sleep(0)  # let the callers of this loop turn join the batch
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            ops = [op for op, _ in batch]
            try:
                async with self._hub.db.transaction() as tx:
                    results = await self._run(tx, ops)
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
            if self._after is not None:
                self._after(ops)

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout``) for what was submitted to be committed or failed."""
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(task), timeout)


Publish = tuple[str, str | None, Sequence[tuple[str | None, str, bytes]]]
"""A batched publish: topic, the one group it is for (or ``None``), rows (key, headers, body)."""
Settle = tuple[str, int, int, str, float]
"""A batched settle: ``"ack"`` or ``"nack"``, group id, message id, owner, nack delay."""


class Hub:
    """One database as this process's adapters share it (see the module docs)."""

    # Per event loop (a loop's id may be reused once it is gone; the loop itself is not).
    _hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Hub]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(
        self,
        key: str,
        settings: SqlSettings,
        db: Database,
        notify: Callable[[Transaction, set[str]], Awaitable[None]] | None,
    ) -> None:
        self.key = key
        self.settings = settings
        self.db = db
        self.sql = Statements(db.dialect)
        self.waker: Waker | None = None
        self._notify = notify
        self._users = 0
        self._closed = False
        self._watchers: dict[str, set[Callable[[], None]]] = {}
        self.topics: set[str] = set()
        """Topics this process published to or subscribed (retention runs on them)."""
        self.publisher: Batcher[Publish, None] = Batcher(self, self._publish, self._published)
        self.settler: Batcher[Settle, bool] = Batcher(self, self._settle)
        self._janitor: asyncio.Task[None] | None = None

    # -- sharing -------------------------------------------------------------------------------

    @classmethod
    async def acquire(
        cls,
        url: str,
        settings: SqlSettings,
        make_waker: Callable[[Hub], Waker],
        notify: Callable[[Transaction, set[str]], Awaitable[None]] | None = None,
        pool_size: int = 1,
        prepare: Callable[[], Awaitable[None]] | None = None,
    ) -> Hub:
        """The hub of ``url`` in this event loop, opened (tables created) on first use.

        ``prepare`` creates the tables on a connection of its own instead of the hub's
        (SQLite: one whose lock wait ends by itself within the connect timeout)."""
        key = url
        hubs = cls._hubs.setdefault(asyncio.get_running_loop(), {})
        hub = hubs.get(key)
        if hub is None or hub._closed:
            if prepare is not None:
                await prepare()
            db = await Database.connect(
                settings.database_url, min_size=1, max_size=max(1, pool_size)
            )
            try:
                if prepare is None:
                    await provision(db, create=settings.provision, where=settings.where)
                hub = cls(key, settings, db, notify)
                hub.waker = make_waker(hub)
                await hub.waker.start()
            except asyncio.CancelledError:
                # Connecting ran out of time (a write lock held elsewhere, a server that
                # does not answer): closing may have to wait behind the very statement
                # that hangs, so it finishes in the background, not in the caller's time.
                _background(_close_quietly(db))
                raise
            except BaseException:
                await asyncio.shield(_close_quietly(db))
                raise
            if key in hubs and not hubs[key]._closed:  # opened meanwhile
                other = hubs[key]
                await hub._shut()
                hub = other
            else:
                hubs[key] = hub
                hub._janitor = asyncio.create_task(hub._retention())
        hub._users += 1
        return hub

    async def release(self) -> None:
        """One adapter less; the last one closes the hub (bounded, even if unreachable)."""
        self._users -= 1
        if self._users > 0:
            return
        for hubs in list(self._hubs.values()):
            if hubs.get(self.key) is self:
                del hubs[self.key]
        await self._shut()

    async def _shut(self) -> None:
        self._closed = True
        if self._janitor is not None:
            self._janitor.cancel()
            await asyncio.gather(self._janitor, return_exceptions=True)
        await self.publisher.drain(10.0)
        await self.settler.drain(5.0)
        if self.waker is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.waker.close(), 10.0)
        await _close_quietly(self.db)

    # -- waking ------------------------------------------------------------------------------

    def watch(self, topic: str, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever something may have changed on ``topic``."""
        self._watchers.setdefault(topic, set()).add(wake)
        self.topics.add(topic)

    def unwatch(self, topic: str, wake: Callable[[], None]) -> None:
        watchers = self._watchers.get(topic)
        if watchers is not None:
            watchers.discard(wake)
            if not watchers:
                del self._watchers[topic]

    def watched(self) -> list[str]:
        """The topics someone in this process waits on."""
        return list(self._watchers)

    def wake(self, topic: str | None = None) -> None:
        """Wake the subscriptions of ``topic`` (every one when ``None``)."""
        if topic is None:
            targets = [wake for watchers in self._watchers.values() for wake in watchers]
        else:
            targets = list(self._watchers.get(topic, ()))
        for wake in targets:
            wake()

    # -- batched writes -------------------------------------------------------------------------

    async def _publish(self, tx: Transaction, ops: list[Publish]) -> list[None]:
        # Topics in one order in every transaction: two never wait for each other's row.
        for topic, group, rows in sorted(ops, key=lambda op: op[0]):
            await self.sql.append(tx, topic, group, rows)
        if self._notify is not None:
            await self._notify(tx, {topic for topic, _, _ in ops})
        return [None] * len(ops)

    def _published(self, ops: list[Publish]) -> None:
        for topic in {op[0] for op in ops}:
            self.topics.add(topic)
            self.wake(topic)

    async def _settle(self, tx: Transaction, ops: list[Settle]) -> list[bool]:
        # The acks of one consumer go as one statement; nacks (rarer) one by one.
        acks: dict[tuple[int, str], list[int]] = {}
        for how, gid, message_id, owner, _ in ops:
            if how == "ack":
                acks.setdefault((gid, owner), []).append(message_id)
        done: set[tuple[int, int]] = set()
        for (gid, owner), ids in acks.items():
            done.update((gid, mid) for mid in await self.sql.ack(tx, gid, owner, ids))
        results = []
        for how, gid, message_id, owner, delay in ops:
            if how == "ack":
                results.append((gid, message_id) in done)
            else:
                results.append(await self.sql.nack(tx, gid, message_id, owner, delay))
        return results

    async def touch(self, tx: Transaction, topic: str) -> None:
        """Tell other processes that messages of ``topic`` became available."""
        await self.sql.touch(tx, topic)
        if self._notify is not None:
            await self._notify(tx, {topic})

    # -- retention ---------------------------------------------------------------------------------

    async def _retention(self) -> None:
        s = self.settings
        max_age = None if math.isinf(s.max_age) else s.max_age
        if max_age is None and s.max_messages is None:
            return
        while True:
            await asyncio.sleep(s.retention_interval)
            for topic in sorted(self.topics):
                try:
                    await self.expire(topic, max_age, s.max_messages)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning(
                        "retention of topic %s on %s failed (%s: %s); trying again in %gs",
                        topic,
                        s.masked_url,
                        type(exc).__name__,
                        exc,
                        s.retention_interval,
                    )

    async def expire(self, topic: str, max_age: float | None, max_messages: int | None) -> int:
        """Apply retention to ``topic`` now, in batches; returns how many were deleted."""
        total = 0
        while True:
            async with self.db.transaction() as tx:
                deleted = await self.sql.expire(tx, topic, max_age, max_messages)
            total += deleted
            if deleted < 1000:
                break
            await asyncio.sleep(0)
        if total:
            log.info(
                "retention deleted %d message(s) of topic %s on %s",
                total,
                topic,
                self.settings.masked_url,
            )
        return total


_BACKGROUND: set[asyncio.Task[None]] = set()


def _background(step: Awaitable[None]) -> None:
    task = asyncio.ensure_future(step)
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)


async def _close_quietly(db: Database) -> None:
    try:
        await asyncio.wait_for(db.close(), 10.0)
    except Exception as exc:  # closing must end, whatever the database does
        log.info("closing the database connection failed: %s: %s", type(exc).__name__, exc)


__all__ = ["Batcher", "Hub", "Publish", "Settle", "Waker"]
