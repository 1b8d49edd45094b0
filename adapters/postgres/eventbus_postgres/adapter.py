"""The PostgreSQL adapter: the shared SQL broker (:mod:`eventbus.sqlbroker`) on asyncpg.

What PostgreSQL adds to it:

- competing consumers claim with ``FOR UPDATE SKIP LOCKED`` (two never take one
  row, neither waits for the other) and move new messages into the group's
  pending rows under the group row's lock (one at a time; the others claim what
  is already there and look again at once);
- a topic's publishers take turns on the topic's row lock, so ids are committed in
  order and a group's position never passes a message that commits later;
- ``pg_notify`` in each publishing transaction wakes the consumers of every process
  listening (:mod:`.listener`), on any machine;
- time is the server's clock, so consumers on machines whose clocks differ agree
  on when a lease ends or a delay is due.

Example::

    bus = EventBus.from_url("postgresql://app:secret@db:5432/shop", source="billing")
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from eventbus.patterns.sql import Transaction, split_options
from eventbus.sqlbroker.adapter import SqlAdapter
from eventbus.sqlbroker.hub import Hub, Waker
from eventbus.sqlbroker.settings import SqlSettings

from .listener import Listener, notify
from .settings import PING_INTERVAL, PING_TIMEOUT, POOL_SIZE, parse_settings


class PostgresAdapter(SqlAdapter):
    """A PostgreSQL database as the broker: ``postgresql://user:password@host:5432/db``."""

    schemes = ("postgres", "postgresql")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.pool_size = int(self.settings.option("pool_size", POOL_SIZE))

    def parse(self, url: str) -> SqlSettings:
        return parse_settings(url)

    @property
    def ping_timeout(self) -> float:
        return split_options(self.settings.database_url)[1].ping or PING_TIMEOUT

    def half_open_bound(self) -> float | None:
        # The listening connection's ping interval plus its deadline; pooled connections
        # are checked by each transaction's BEGIN within ping_timeout.
        return float(self.settings.option("ping_interval", PING_INTERVAL)) + self.ping_timeout

    def make_waker(self, hub: Hub) -> Waker:
        dsn, timeouts = split_options(self.settings.database_url)
        return Listener(
            hub,
            dsn,
            timeouts.connect or 3600.0,
            float(self.settings.option("ping_interval", PING_INTERVAL)),
            self.ping_timeout,
            self.settings.where,
        )

    def notifier(self) -> Callable[[Transaction, set[str]], Awaitable[None]] | None:
        return notify

    def connect_hint(self) -> str:
        return (
            "check that PostgreSQL is reachable, that the user, password and database "
            "are right, and that the user may create tables (on first use)"
        )
