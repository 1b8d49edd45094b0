"""The conformance target of ``sqlite://``: a temporary database file, and the one fault a
local SQLite file has.

A SQLite database is a file every process opens itself: there is no server, no
network path and no connection a proxy could drop, freeze or refuse. What makes a
SQLite broker stop answering is another connection holding the file's write lock
(a stuck process, a long migration or backup, a shell left inside ``BEGIN``):
nothing can be published, claimed or settled until it lets go. The target's fault
hooks do exactly that from a connection of their own (:class:`WriteLockFaults`):
``refuse_connections(s)`` holds the lock ``s`` seconds, ``freeze()`` until
``thaw()``; the cases built on them (health following the database, publishes
retrying while it is locked, a settle that cannot be written, a "silent" database
at connect, a lock noticed within ``half_open_bound``) run as they are. The two
cases with no counterpart are declared in :data:`SQLITE_LIMITS`.
"""

from __future__ import annotations

import asyncio
import atexit
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from eventbus.patterns.sql import Database
from eventbus.sqlbroker.queries import Statements
from eventbus.testing import BrokerTarget
from eventbus.testing.target import ShortLease

LEASE_S = 3.0
"""The target's lease: a crashed consumer's messages come back after it (the crash-loop
case waits for it three times), and the slow-handler case runs 2.5 times over it."""

SQLITE_LIMITS: dict[str, str] = {
    "test_reconnect_after_connection_drop": (
        "a SQLite database is a file each process opens itself: there is no connection "
        "to drop (the write lock held by another connection, the way a SQLite file stops "
        "answering, is what the refusal, settle-failure, freeze and silent-endpoint cases "
        "hold)"
    ),
    "test_broker_restart_loses_nothing_acknowledged": (
        "SQLite has no server process to restart: the log is the file, and a commit is on "
        "disk when publish() returns (WAL, synchronous=FULL); a consumer process killed and "
        "started again is what the crash-loop case and the CLI workflow test "
        "(integration_tests/sqlite/test_sqlite_cli.py) check"
    ),
}


class WriteLockFaults:
    """Holds the database's write lock from a connection of its own (see the module docs).

    ``drop_connections`` has no counterpart on a file; it raises, and the case that
    needs it is declared in :data:`SQLITE_LIMITS`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._until = 0.0  # monotonic end of the hold; inf: until thaw()
        self._guard = threading.Lock()
        self._thread: threading.Thread | None = None
        self._held = threading.Event()

    async def drop_connections(self) -> None:
        raise NotImplementedError(SQLITE_LIMITS["test_reconnect_after_connection_drop"])

    async def refuse_connections(self, seconds: float) -> None:
        """Hold the write lock for ``seconds``; returns once it is held."""
        await self._hold(time.monotonic() + seconds)

    async def freeze(self, seconds: float | None = None) -> None:
        """Hold the write lock until :meth:`thaw` (or ``seconds``); returns once held."""
        await self._hold(float("inf") if seconds is None else time.monotonic() + seconds)

    async def thaw(self) -> None:
        with self._guard:
            self._until = 0.0
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join, 30.0)

    async def heal(self) -> None:
        """End a hold now (the conformance suite calls it when a case ends)."""
        await self.thaw()

    async def _hold(self, until: float) -> None:
        with self._guard:
            self._until = max(self._until, until)
            if self._thread is None or not self._thread.is_alive():
                self._held.clear()
                self._thread = threading.Thread(
                    target=self._run, daemon=True, name="sqlite-write-lock"
                )
                self._thread.start()
        if not await asyncio.to_thread(self._held.wait, 30.0):
            raise AssertionError(f"could not take the write lock of {self.path} in 30s")

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._held.set()
            while True:
                with self._guard:
                    if time.monotonic() >= self._until:
                        self._thread = None
                        break
                time.sleep(0.01)
            conn.execute("ROLLBACK")
        finally:
            conn.close()


def delete_group(url: str) -> Callable[[str, str], Awaitable[None]]:
    """The ``delete_underneath`` hook: delete the group's row and its pending rows, with
    a connection of its own, as an operator's ``DELETE`` would."""

    async def delete(topic: str, group: str) -> None:
        db = await Database.connect(url.partition("?")[0])
        try:
            async with db.transaction() as tx:
                if not await Statements(db.dialect).delete_group(tx, topic, group):
                    raise AssertionError(f"group {group!r} of topic {topic!r} did not exist")
        finally:
            await db.close()

    return delete


_directory: Path | None = None


def sqlite_target(name: str = "sqlite") -> BrokerTarget:
    """A target on a fresh temporary database file (removed when the tests end)."""
    global _directory
    if _directory is None:
        _directory = Path(tempfile.mkdtemp(prefix="eventbus-sqlite-"))
        atexit.register(shutil.rmtree, _directory, True)
    path = _directory / "conformance.db"
    url = f"sqlite:///{path}?lease={LEASE_S:g}"
    return BrokerTarget(
        name=name,
        url=url,
        faults=WriteLockFaults(path),
        faulty_url=url,
        limits=SQLITE_LIMITS,
        delete_underneath=delete_group(url),
        short_lease=ShortLease(url, LEASE_S),
    )
