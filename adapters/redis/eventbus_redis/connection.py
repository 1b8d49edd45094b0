"""The redis-py client every Redis adapter and store uses, built from ``RedisSettings``.

Commands are packed by hiredis (C) rather than redis-py's pure-Python packer, and
connection errors are retried by redis-py with backoff (about 6 s in all), so a
dropped connection or a short restart is ridden out below the adapters.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .settings import RedisSettings

log = logging.getLogger("eventbus.redis")

CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
_SIMPLE = frozenset((str, bytes, int))


class _HiredisPacking:
    """Packs commands with hiredis's C packer: an XADD of a CloudEvent has some 20
    arguments, and redis-py's pure-Python packer cost more than everything else the
    adapter does per message. Anything but str/bytes/int goes the usual way."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if _SIMPLE.issuperset(map(type, args)):
            first = args[0]
            space = " " if isinstance(first, str) else b" "
            if space in first:  # "XGROUP CREATE": the command name is two words
                args = (*first.split(), *args[1:])
            return [hiredis.pack_command(args)]
        return super().pack_command(*args)  # type: ignore[misc, no-any-return]


class FastConnection(_HiredisPacking, Connection):
    pass


class FastSSLConnection(_HiredisPacking, SSLConnection):
    pass


def new_client(s: RedisSettings) -> Redis:
    """A client with the settings ``s``: every reply within ``read_timeout``, connection
    errors and timeouts retried with backoff on a new connection."""
    options: dict[str, Any] = {
        "host": s.host,
        "port": s.port,
        "db": s.db,
        "username": s.username,
        "password": s.password,
        "socket_connect_timeout": s.connect_timeout,
        "socket_timeout": s.read_timeout,
        "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=10),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError, ConnectionResetError],
        "client_name": s.client_name,
    }
    if s.tls:
        options.update(ssl=True, ssl_ca_certs=s.ssl_ca_certs, ssl_certfile=s.ssl_certfile,
                       ssl_keyfile=s.ssl_keyfile, ssl_cert_reqs=s.ssl_cert_reqs)
    client = Redis(**options)
    # Connections are made lazily, so the pool can still be given the faster class.
    client.connection_pool.connection_class = FastSSLConnection if s.tls else FastConnection
    return client


async def quiet_close(client: Redis) -> None:
    """Close ``client`` within 5 s, whatever state it is in."""
    try:
        await asyncio.wait_for(client.aclose(), 5.0)
    except BaseException as exc:  # a client torn down mid-call may raise CancelledError
        if isinstance(exc, asyncio.CancelledError) and _really_cancelled():
            raise
        log.debug("closing a Redis client failed: %r", exc)


def _really_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
