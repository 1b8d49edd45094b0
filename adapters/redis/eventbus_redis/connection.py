"""The redis-py client every Redis adapter and store uses, built from ``RedisSettings``,
and what its errors mean.

Commands are packed by hiredis (C) rather than redis-py's pure-Python packer, and
connection errors are retried by redis-py with backoff (about 6 s in all), so a
dropped connection or a short restart is ridden out below the adapters. A client
the user configured (``RedisStreamsAdapter(settings=..., client=...)``) is used as
it is and never closed by the adapter.

:data:`CLIENT_ERRORS` and :func:`group_errors` say, for
:func:`eventbus.adapters_util.map_exceptions`, which client errors are Redis out of
reach (retried) and which a refusal that retrying will not change.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection, SentinelManagedSSLConnection
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from eventbus.adapters_util import ExceptionMap, Mapped
from eventbus.errors import BrokerConnectionError, ProvisioningError

from .settings import RedisSettings

log = logging.getLogger("eventbus.redis")

CONNECTION_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)
"""Redis out of reach: no answer (within redis-py's retries), a refused connection."""

CLIENT_ERRORS: ExceptionMap = {(RedisError, *CONNECTION_ERRORS): BrokerConnectionError}
"""Anything redis-py raises, as the connection failing (connecting, subscribing)."""


def group_errors(exc: Exception) -> Mapped | None:
    """What a failure to create or look up a consumer group means: its stream missing
    while the adapter may not create it (``provision=false``), or the topic's key
    holding something other than a stream, does not change by retrying, so
    :class:`ProvisioningError`; anything else is Redis out of reach."""
    text = str(exc)
    if isinstance(exc, ResponseError) and "requires the key to exist" in text:
        return (
            ProvisioningError,
            "the stream does not exist and provision=false: create it "
            "(XGROUP CREATE <stream> <group> $ MKSTREAM) or set provision=true",
        )
    if isinstance(exc, ResponseError) and text.startswith("WRONGTYPE"):
        return (
            ProvisioningError,
            "the topic's key holds another type than a stream: use "
            "another topic, or remove the key",
        )
    if isinstance(exc, RedisError | CONNECTION_ERRORS):
        return BrokerConnectionError
    return None


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


class FastSentinelConnection(_HiredisPacking, SentinelManagedConnection):
    pass


class FastSentinelSSLConnection(_HiredisPacking, SentinelManagedSSLConnection):
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
        options.update(
            ssl=True,
            ssl_ca_certs=s.tls_ca,
            ssl_certfile=s.tls_cert,
            ssl_keyfile=s.tls_key,
            ssl_cert_reqs="required" if s.tls_verify else "none",
        )
    if s.sentinel is not None:
        return _sentinel_client(s, options)
    client = Redis(**options)
    # Connections are made lazily, so the pool can still be given the faster class.
    client.connection_pool.connection_class = FastSSLConnection if s.tls else FastConnection
    return client


def _sentinel_client(s: RedisSettings, options: dict[str, Any]) -> Redis:
    """A client of the primary the Sentinels of ``s`` name: each new connection asks
    them where it is, and one that finds a demoted primary (``READONLY``) is dropped and
    retried, so the client follows a failover. The Sentinels are asked without the
    login (Sentinel's own ``requirepass`` is not supported)."""
    sentinels = []
    for server in s.sentinels:
        host, _, port = server.rpartition(":")
        sentinels.append((host.strip("[]"), int(port)))
    del options["host"], options["port"]
    manager = Sentinel(  # type: ignore[no-untyped-call]
        sentinels,
        sentinel_kwargs={"socket_connect_timeout": s.connect_timeout, "socket_timeout": 2.0},
        **options,
    )
    client: Redis = manager.master_for(s.sentinel or "", redis_class=Redis)
    pool = client.connection_pool
    pool.connection_class = FastSentinelSSLConnection if s.tls else FastSentinelConnection
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
