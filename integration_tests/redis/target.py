"""The conformance targets of Redis: a private, restartable ``redis-server`` behind a fault proxy.

The harness's shared Redis (found on 6379) cannot be restarted, so the suite
runs on a server started here (AOF with an fsync per write, see
``harness.processes.start_redis``) whenever ``redis-server`` is installed, and
falls back to the shared one (without the restart case's hook) otherwise.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit, urlunsplit

import pytest
from redis.asyncio import Redis

from eventbus.testing import BrokerTarget
from eventbus.testing.faultproxy import FaultProxy
from eventbus.testing.target import ShortLease
from integration_tests import harness
from integration_tests.harness import processes

SCHEMES = {"redis-streams": "redis+streams", "redis-pubsub": "redis"}
# Pub/Sub keeps nothing: cases whose promise is "nothing is lost across a broken
# connection" cannot hold for it, whatever the adapter does (it reconnects).
PUBSUB_LIMITS: dict[str, str] = {
    "test_reconnect_after_connection_drop": (
        "Redis Pub/Sub stores nothing: a message published while the subscriber's "
        "connection is being re-established is lost (at-most-once by design; use "
        "redis+streams:// to lose nothing)"
    ),
    "test_publish_retries_while_refused": (
        "Redis Pub/Sub stores nothing: messages published before the subscriber has "
        "resubscribed after the refusal are lost (at-most-once by design)"
    ),
}

# The Streams lease: a pending entry idle this long is reclaimed by another consumer
# (kept short so cases stay short; the slow-handler case runs 2.5 times over it).
CLAIM_IDLE_S = 3.0

_lock = threading.Lock()
# (URL through the fault proxy, the proxy, the process or None, URL straight to Redis)
_server: tuple[str, FaultProxy, object, str] | None = None


def _private_server() -> tuple[str, FaultProxy, object, str]:
    global _server
    with _lock:
        if _server is None:
            try:
                proc = processes.start_redis()
            except Exception:
                endpoint, proxy = harness.require_faulty("redis")
                _server = (endpoint.url, proxy, None, endpoint.url)
            else:
                port = urlsplit(proc.url).port
                assert port is not None
                proxy = FaultProxy("127.0.0.1", port).start()
                atexit.register(proxy.stop)
                parts = urlsplit(proc.url)
                url = urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}"))
                _server = (url, proxy, proc, proc.url)
        return _server


def destroy_group(direct_url: str) -> Callable[[str, str], Awaitable[None]]:
    """The ``delete_underneath`` hook of Streams: ``XGROUP DESTROY`` of the group on the
    topic's stream, by a client of its own straight to Redis (not through the proxy).
    The group's consumers, its position and its pending entries are gone; the stream
    and the other groups stay."""

    async def delete(topic: str, group: str) -> None:
        client = Redis.from_url(direct_url)
        try:
            if not await client.xgroup_destroy(topic, group):
                raise AssertionError(f"group {group!r} of stream {topic!r} did not exist")
        finally:
            await client.aclose()

    return delete


def redis_target(name: str, scale: float = 1.0) -> BrokerTarget:
    """The :class:`BrokerTarget` of ``redis-streams`` or ``redis-pubsub``."""
    if name not in SCHEMES:
        pytest.fail(f"unknown Redis target {name!r}")
    url, proxy, proc, direct = _private_server()
    parts = urlsplit(url)
    url = urlunsplit(parts._replace(scheme=SCHEMES[name]))
    streams = name == "redis-streams"
    if streams:
        # Reclaim quickly what a dropped consumer held, so cases stay short.
        url += f"?claim_idle={CLAIM_IDLE_S:g}&claim_interval=0.2"
    restart = getattr(proc, "restart", None)
    return BrokerTarget(
        name=name,
        url=url,
        faults=proxy,
        faulty_url=url,
        scale=scale,
        limits=PUBSUB_LIMITS if name == "redis-pubsub" else {},
        restart=restart,
        # Pub/Sub keeps nothing (no group, no stream) and has no lease.
        delete_underneath=destroy_group(direct) if streams else None,
        short_lease=ShortLease(url, CLAIM_IDLE_S) if streams else None,
    )
