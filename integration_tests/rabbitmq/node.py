"""A private, restartable RabbitMQ node behind a fault proxy, for the conformance target.

The shared broker on 5672 cannot be restarted by tests (others use it), so when
the ``rabbitmq-server`` package is installed the conformance target runs on a
node of its own (started once per session, about 4 s), which gives the restart
case a real broker restart. Without the package it falls back to the shared
broker through the harness's proxy, and the restart case is skipped saying so.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from eventbus.testing.faultproxy import FaultProxy
from integration_tests import harness
from integration_tests.harness import processes


@dataclass(frozen=True)
class Node:
    """Where the target's adapters connect (through ``proxy``) and how to restart."""

    url: str
    proxy: FaultProxy
    restart: Callable[[], None] | None


_lock = threading.Lock()
_node: Node | None = None


def conformance_node() -> Node:
    """The session's private node behind a proxy, or the shared broker's proxy."""
    global _node
    with _lock:
        if _node is not None:
            return _node
        try:
            process = processes.start_rabbitmq()
        except Exception:
            endpoint, proxy = harness.require_faulty("rabbitmq")
            _node = Node(endpoint.url, proxy, None)
            return _node
        atexit.register(process.close)
        parts = urlsplit(process.url)
        proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5672).start()
        atexit.register(proxy.stop)
        netloc = f"{parts.username}:{parts.password}@{parts.hostname}:{proxy.port}"
        _node = Node(urlunsplit(parts._replace(netloc=netloc)), proxy, process.restart)
        return _node
