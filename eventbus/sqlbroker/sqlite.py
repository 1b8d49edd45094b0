"""``sqlite:///path/to/file.db``: a SQLite file as the broker, for one machine.

Every process that opens the file shares its topics, groups and messages: a
service needs no broker server, and ``eventbus run``, ``eventbus publish`` and
``eventbus dlq`` in different terminals meet in the file. The database is in WAL
mode (readers never wait for the writer) and commits with ``synchronous=FULL``
(SQLite's default: a confirmed publish survives a power cut). Writers take turns
on the file's one write lock, waiting up to ``busy_timeout``.

Options, besides the common ones (:mod:`eventbus.sqlbroker.settings`):

- ``poll_interval`` (0.05 s): how often this process checks the file for other
  processes' commits (``PRAGMA data_version``, a read of a counter in memory) and
  wakes its subscriptions of the topics that changed. Publishes in the same
  process wake them at once.
- ``health_timeout`` (1 s): ``health()`` takes the write lock for a moment and
  reports the database locked when another connection holds it longer than this
  (a stuck writer: the one way a local SQLite file stops answering).
- ``busy_timeout`` (30 s): how long a write waits for another connection's lock.
- ``connect_timeout`` (10 s): how long the first connect (which creates the
  tables, a write) may wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode

from eventbus.errors import ConfigurationError, InvalidURLError, mask_url
from eventbus.patterns import _sqlite
from eventbus.patterns.sql import Database, DatabaseError
from eventbus.sqlbroker.adapter import SqlAdapter
from eventbus.sqlbroker.hub import Hub, Waker
from eventbus.sqlbroker.provision import provision
from eventbus.sqlbroker.settings import TIMEOUTS, SqlSettings, parse_url
from eventbus.url_options import TLS_OPTIONS, query_pairs, seconds

log = logging.getLogger("eventbus.sqlbroker")

POLL_INTERVAL = 0.05
HEALTH_TIMEOUT = 1.0


class SQLiteAdapter(SqlAdapter):
    """A SQLite file as the broker: ``sqlite:///relative.db``, ``sqlite:////absolute.db``.

    Example::

        bus = EventBus.from_url("sqlite:///eventbus.db", source="billing")
    """

    schemes = ("sqlite",)

    def parse(self, url: str) -> SqlSettings:
        tls = sorted({key for key, _ in query_pairs(url.partition("?")[2])} & set(TLS_OPTIONS))
        if tls:
            raise InvalidURLError(
                f"{', '.join(tls)} in SQLite URL {mask_url(url)!r}: a SQLite file is opened "
                "locally, with no connection to secure; drop the option (a server database "
                "with TLS is postgresql://...?tls_ca=...)"
            )
        settings = parse_url(
            url,
            dialect="sqlite",
            name="SQLite",
            where=_where,
            own={
                "poll_interval": seconds(0.001, inclusive=True),
                "health_timeout": seconds(0.05, inclusive=True),
            },
            passthrough={name: TIMEOUTS[name] for name in ("busy_timeout", "connect_timeout")},
        )
        return settings

    @property
    def path(self) -> str:
        """The database file."""
        return _sqlite.sqlite_path(self.settings.database_url)

    def half_open_bound(self) -> float | None:
        # A file has no connection to go half-open; what stops it answering is another
        # connection holding the write lock, which health() reports within this.
        return float(self.settings.option("health_timeout", HEALTH_TIMEOUT))

    def make_waker(self, hub: Hub) -> Waker:
        return FileWatcher(
            hub,
            self.path,
            float(self.settings.option("poll_interval", POLL_INTERVAL)),
            self.half_open_bound() or HEALTH_TIMEOUT,
        )

    def prepare(self) -> Callable[[], Awaitable[None]] | None:
        # The tables are created on a connection of its own whose lock wait ends by itself
        # at connect_timeout: a BEGIN abandoned by cancelling it would run on in
        # aiosqlite's thread once the lock is free, and hold the lock if nobody is left
        # to roll it back (the event loop gone).
        url, limit = self.settings.database_url, self.settings.connect_timeout
        if not math.isinf(limit):
            base, _, query = url.partition("?")
            kept = [(k, v) for k, v in parse_qsl(query) if k != "busy_timeout"]
            url = f"{base}?{urlencode([*kept, ('busy_timeout', f'{limit:g}')])}"

        async def create_tables() -> None:
            db = await Database.connect(url)
            try:
                await provision(db, create=self.settings.provision, where=self.settings.where)
            finally:
                await db.close()

        return create_tables

    def connect_hint(self) -> str:
        return (
            "check that the directory exists and is writable, and that no other process "
            "holds the database's write lock"
        )

    def before_write(self) -> None:
        # A publish from inside a transaction this task holds on the same file (the
        # patterns' database layer) would wait for that transaction's lock, which waits
        # for the publish: refuse it at once instead of after busy_timeout.
        task = asyncio.current_task()
        if task is not None and _sqlite._WRITERS.get(os.path.realpath(self.path)) is task:
            raise ConfigurationError(
                f"publishing to {self.settings.where} from inside a transaction open on the "
                "same SQLite file would wait for itself (one writer per file): publish after "
                "the transaction commits, or through the transactional outbox "
                "(eventbus.patterns.outbox), which stores the event in that transaction"
            )


def _where(base: str) -> str:
    path = _sqlite.sqlite_path(base)
    if path == ":memory:" or not path:
        raise InvalidURLError(
            f"{mask_url(base)} names no file: the SQLite broker lives in a file every process "
            "opens (sqlite:///relative/path.db or sqlite:////absolute/path.db); use memory:// "
            "for a broker inside one process"
        )
    return f"SQLite database {os.path.abspath(path)}"


class FileWatcher:
    """Hears other connections' commits on the file, by polling ``PRAGMA data_version``
    on a connection of its own, and wakes the subscriptions of topics whose version
    moved. Its connection also probes the write lock for ``health()``."""

    def __init__(self, hub: Hub, path: str, interval: float, lock_timeout: float) -> None:
        self.hub = hub
        self.path = path
        self.shown = os.path.abspath(path)
        self.interval = interval
        self.lock_timeout = lock_timeout
        self._conn: Any = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._versions: dict[str, int] = {}
        self._failing: str | None = None

    async def start(self) -> None:
        import aiosqlite

        try:
            self._conn = await aiosqlite.connect(
                self.path, timeout=self.lock_timeout, isolation_level=None
            )
        except (sqlite3.Error, OSError) as exc:
            raise DatabaseError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        self._task = asyncio.create_task(self._watch())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _watch(self) -> None:
        last: Any = None
        while True:
            await asyncio.sleep(self.interval)
            try:
                async with self._lock:
                    rows = await self._conn.execute_fetchall("PRAGMA data_version")
                    version = rows[0][0]
                    if version == last:
                        continue
                    last = version
                    topics = self.hub.watched()
                    changed = await self._changed(topics) if topics else []
                self._failing = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next poll tries again; health() shows it
                self._failing = f"{type(exc).__name__}: {exc}"
                log.debug("watching %s failed: %s", self.path, exc)
                continue
            for topic in changed:
                self.hub.wake(topic)

    async def _changed(self, topics: list[str]) -> list[str]:
        marks = ", ".join("?" for _ in topics)
        rows = await self._conn.execute_fetchall(
            f"SELECT name, version FROM eventbus_topics WHERE name IN ({marks})", topics
        )
        changed = []
        for name, version in rows:
            if self._versions.get(name) != version:
                self._versions[name] = version
                changed.append(str(name))
        return changed

    async def probe(self) -> str | None:
        """Take the write lock for a moment: ``None`` if that works within the timeout."""
        conn = self._conn
        if conn is None:
            return f"SQLite database {self.path!r} is closed"
        async with self._lock:
            try:
                await conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    return (
                        f"SQLite database {self.shown} is locked: another "
                        f"connection has held its write lock for over "
                        f"{self.lock_timeout:g}s, so nothing can be published or settled "
                        "until it commits (a stuck process, a long migration or backup, "
                        "a shell left inside BEGIN?)"
                    )
                return f"SQLite database {self.path!r} does not answer: {exc}"
            except sqlite3.Error as exc:
                return f"SQLite database {self.path!r} does not answer: {exc}"
            with contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")
        if self._failing is not None:
            return f"watching SQLite database {self.path!r} fails: {self._failing}"
        return None


__all__ = ["FileWatcher", "SQLiteAdapter"]
