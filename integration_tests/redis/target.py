"""The conformance targets of Redis: a private, restartable ``redis-server`` behind a fault proxy.

The harness's shared Redis (found on 6379) cannot be restarted, so the suite
runs on a server started here (AOF with an fsync per write, see
``harness.processes.start_redis``) whenever ``redis-server`` is installed, and
falls back to the shared one (without the restart case's hook) otherwise.
"""

from __future__ import annotations

import atexit
import threading
from urllib.parse import urlsplit, urlunsplit

import pytest

from eventbus.testing import BrokerTarget
from eventbus.testing.faultproxy import FaultProxy
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

_lock = threading.Lock()
_server: tuple[str, FaultProxy, object] | None = None


def _private_server() -> tuple[str, FaultProxy, object]:
    global _server
    with _lock:
        if _server is None:
            try:
                proc = processes.start_redis()
            except Exception:
                endpoint, proxy = harness.require_faulty("redis")
                _server = (endpoint.url, proxy, None)
            else:
                port = urlsplit(proc.url).port
                assert port is not None
                proxy = FaultProxy("127.0.0.1", port).start()
                atexit.register(proxy.stop)
                parts = urlsplit(proc.url)
                url = urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.port}"))
                _server = (url, proxy, proc)
        return _server


def redis_target(name: str, scale: float = 1.0) -> BrokerTarget:
    """The :class:`BrokerTarget` of ``redis-streams`` or ``redis-pubsub``."""
    if name not in SCHEMES:
        pytest.fail(f"unknown Redis target {name!r}")
    url, proxy, proc = _private_server()
    parts = urlsplit(url)
    url = urlunsplit(parts._replace(scheme=SCHEMES[name]))
    if name == "redis-streams":
        # Reclaim quickly what a dropped consumer held, so cases stay short.
        url += "?claim_idle_ms=3000&claim_interval_ms=200"
    restart = getattr(proc, "restart", None)
    return BrokerTarget(
        name=name,
        url=url,
        faults=proxy,
        faulty_url=url,
        scale=scale,
        limits=PUBSUB_LIMITS if name == "redis-pubsub" else {},
        restart=restart,
    )
