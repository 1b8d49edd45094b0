"""PostgreSQL for the patterns' tests: one fresh database per test, dropped after.

The server is the one ``.ci/start-brokers`` brings up (or ``EVENTBUS_TEST_POSTGRES_URL``
pointing at any server whose user may create databases). Unavailable, it fails
the test when ``EVENTBUS_REQUIRE_BROKERS`` names ``postgres`` (``all`` does), and
skips it otherwise, like every other broker of the harness.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

DEFAULT_URL = "postgresql://postgres:postgres@127.0.0.1:5432/test"


class PostgresUnavailableError(Exception):
    """No PostgreSQL server answered at the configured URL."""


def server_url() -> str:
    return os.environ.get("EVENTBUS_TEST_POSTGRES_URL", DEFAULT_URL)


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@asynccontextmanager
async def fresh_database(prefix: str = "eb") -> AsyncIterator[str]:
    """Create a uniquely named database, yield its URL, drop it (with its sessions)."""
    import asyncpg

    admin_url = server_url()
    try:
        admin = await asyncpg.connect(admin_url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise PostgresUnavailableError(
            f"PostgreSQL is not reachable at {urlsplit(admin_url).hostname}:"
            f"{urlsplit(admin_url).port or 5432} ({exc}); run `sudo bash .ci/start-brokers` "
            "or set EVENTBUS_TEST_POSTGRES_URL"
        ) from exc
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _with_database(admin_url, name)
    finally:
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
