"""Hearing other processes' publishes: one ``LISTEN`` connection per database per process.

A transaction that makes messages available (a publish, messages handed back at
close) runs ``pg_notify('eventbus', topic)``; PostgreSQL delivers it when the
transaction commits to every session listening, and the listener wakes this
process's subscriptions of that topic. A notification can be missed (the
listening connection was being replaced), so after a reconnect every
subscription looks once, and an idle one looks every ``idle_poll`` anyway.

Why the ping: a connection that only listens sends nothing, so a path that stopped
forwarding (a frozen NAT entry, a pulled cable) would leave it waiting forever
with ``health()`` ok. It is pinged every ``ping_interval`` with a deadline of
``ping_timeout``; one that does not answer is dropped and opened again, and until
then ``health()`` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import asyncpg

from eventbus.patterns.sql import DatabaseError, Transaction, postgres_error
from eventbus.sqlbroker.hub import Hub

log = logging.getLogger("eventbus.postgres")

CHANNEL = "eventbus"
MAX_PAYLOAD = 7999
"""Bytes a notification's payload may hold (PostgreSQL's limit is 8000)."""


async def notify(tx: Transaction, topics: set[str]) -> None:
    """Notify the listeners of every database session of ``topics``, at commit."""
    for topic in sorted(topics):
        # A name too long for a payload wakes every subscription (the empty payload).
        payload = topic if len(topic.encode()) <= MAX_PAYLOAD else ""
        await tx.execute("SELECT pg_notify($1, $2)", CHANNEL, payload)


class Listener:
    """The hub's :class:`~eventbus.sqlbroker.hub.Waker` on PostgreSQL."""

    def __init__(
        self,
        hub: Hub,
        dsn: str,
        connect_timeout: float,
        ping_interval: float,
        ping_timeout: float,
        where: str,
    ) -> None:
        self.hub = hub
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.where = where
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._problem: str | None = None
        self._lost = asyncio.Event()

    async def start(self) -> None:
        """Connect and listen (DatabaseError if the server does not answer in time)."""
        await self._connect()
        self._task = asyncio.create_task(self._keep())

    async def _connect(self) -> None:
        try:
            conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise postgres_error(exc, self.where) from exc
        try:
            await conn.add_listener(CHANNEL, self._notified)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._terminated)
        self._conn = conn
        self._lost.clear()

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.hub.wake(payload or None)

    def _terminated(self, _conn: Any) -> None:
        if self._conn is _conn:
            self._problem = f"the listening connection to {self.where} was closed"
            self._lost.set()

    async def _keep(self) -> None:
        """Ping; on a failure drop the connection and open another, with backoff."""
        delay = 0.1
        while True:
            if self._conn is None or self._lost.is_set():
                await self._drop()
                try:
                    await self._connect()
                except (DatabaseError, OSError) as exc:
                    self._problem = f"cannot listen on {self.where}: {exc}"
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                delay = 0.1
                self._problem = None
                log.info("listening on %s again; every subscription looks for work", self.where)
                self.hub.wake()  # notifications sent meanwhile were missed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self.ping_interval)
            if self._lost.is_set():
                continue
            started = time.monotonic()
            try:
                await self._conn.fetchval("SELECT 1", timeout=self.ping_timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._problem = (
                    f"{self.where} did not answer a ping within "
                    f"{self.ping_timeout:g}s ({type(exc).__name__}); the "
                    "connection is replaced"
                )
                log.warning("%s (waited %.1fs)", self._problem, time.monotonic() - started)
                self._lost.set()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # no goodbye over a link that may be dead

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), self.ping_timeout)
            except Exception:
                conn.terminate()

    async def probe(self) -> str | None:
        """What is wrong with the listening connection, else a round trip on the pool."""
        if self._problem is not None:
            return self._problem
        try:
            async with self.hub.db.transaction() as tx:
                await tx.fetchval("SELECT 1")
        except Exception as exc:
            return f"{self.where} does not answer: {exc}"
        return None
