"""The conformance target of ``postgres://``: a database of its own on the server at
127.0.0.1:5432 (or ``EVENTBUS_TEST_POSTGRES_URL``), reached through a fault proxy.

The database is created when the target is first asked for and dropped (with its
sessions) when the test process ends. Every case goes through the proxy, so the
reconnect, half-open and silent-endpoint cases break the very connections the
adapter uses (its pool and its ``LISTEN`` connection).

The server is shared (other databases, other users), so the restart hook does not
stop it: it does what clients see of a restart — the server ends every session of
the test database (``pg_terminate_backend``, as a shutdown does) and connections
are refused for a few seconds, then accepted again. What PostgreSQL itself keeps
across a real restart (committed rows, by its WAL) is PostgreSQL's promise.
"""

from __future__ import annotations

import asyncio
import atexit
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import pytest

from eventbus.patterns.sql import Database
from eventbus.sqlbroker.queries import Statements
from eventbus.testing import BrokerTarget
from eventbus.testing.faultproxy import FaultProxy
from eventbus.testing.target import ShortLease
from integration_tests import harness
from integration_tests.harness import postgres

LEASE_S = 3.0
"""The target's lease (crash and slow-handler cases), as for SQLite."""
OPTIONS = f"lease={LEASE_S:g}&ping_interval=2&ping_timeout=2&connect_timeout=5"
"""A short ping keeps the half-open case quick (noticed within 4 s)."""
RESTART_REFUSAL = 3.0

_made: tuple[str, str, FaultProxy] | None = None  # (URL through the proxy, direct URL, proxy)


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(postgres.server_url(), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _database() -> tuple[str, str, FaultProxy]:
    global _made
    if _made is None:
        name = f"eb_conformance_{uuid.uuid4().hex[:10]}"
        try:
            asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
        except Exception as exc:
            message = (
                f"PostgreSQL is not reachable at {postgres.server_url()} ({exc}); run "
                "`sudo bash .ci/start-brokers` or set EVENTBUS_TEST_POSTGRES_URL"
            )
            if "postgres" in harness.endpoints.required_brokers():
                pytest.fail(f"{message}\n(required by EVENTBUS_REQUIRE_BROKERS)", pytrace=False)
            pytest.skip(message)
        atexit.register(
            lambda: asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        )
        server = urlsplit(postgres.server_url())
        proxy = FaultProxy(server.hostname or "127.0.0.1", server.port or 5432).start()
        atexit.register(proxy.stop)
        direct = urlunsplit(server._replace(path=f"/{name}"))
        netloc = server.netloc.rsplit("@", 1)
        through = (
            f"{netloc[0]}@127.0.0.1:{proxy.port}" if len(netloc) == 2 else f"127.0.0.1:{proxy.port}"
        )
        url = urlunsplit(server._replace(netloc=through, path=f"/{name}", query=OPTIONS))
        _made = (url, direct, proxy)
    return _made


def delete_group(direct: str) -> Callable[[str, str], Awaitable[None]]:
    """The ``delete_underneath`` hook: delete the group and its pending rows, as an
    operator's ``DELETE`` would, on a connection of its own (not through the proxy)."""

    async def delete(topic: str, group: str) -> None:
        db = await Database.connect(direct, max_size=1)
        try:
            async with db.transaction() as tx:
                if not await Statements("postgres").delete_group(tx, topic, group):
                    raise AssertionError(f"group {group!r} of topic {topic!r} did not exist")
        finally:
            await db.close()

    return delete


def restart_hook(name: str, proxy: FaultProxy) -> Callable[[], Awaitable[None]]:
    """See the module docs: sessions ended by the server, connections refused a while."""

    async def restart() -> None:
        await proxy.refuse_connections(RESTART_REFUSAL)
        await _admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
            f"datname = '{name}' AND pid <> pg_backend_pid()"
        )
        await asyncio.sleep(RESTART_REFUSAL)

    return restart


def postgres_target(name: str = "postgres") -> BrokerTarget:
    """The :class:`BrokerTarget` of ``postgres://`` (see the module docs)."""
    url, direct, proxy = _database()
    database = urlsplit(direct).path.lstrip("/")
    return BrokerTarget(
        name=name,
        url=url,
        faults=proxy,
        faulty_url=url,
        restart=restart_hook(database, proxy),
        delete_underneath=delete_group(direct),
        short_lease=ShortLease(url, LEASE_S),
    )
