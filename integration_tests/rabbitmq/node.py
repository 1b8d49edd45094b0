"""A private, restartable RabbitMQ node behind a fault proxy, for the conformance target.

The shared broker on 5672 cannot be restarted by tests (others use it), so when
the ``rabbitmq-server`` package is installed the conformance target runs on a
node of its own (started once per session, about 4 s), which gives the restart
case a real broker restart. Without the package it falls back to the shared
broker through the harness's proxy, and the restart case is skipped saying so.
"""

from __future__ import annotations

import atexit
import subprocess
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika

from eventbus.testing.faultproxy import FaultProxy
from integration_tests import harness
from integration_tests.harness import processes


@dataclass(frozen=True)
class Node:
    """Where the target's adapters connect (through ``proxy``) and how to restart."""

    url: str
    proxy: FaultProxy
    restart: Callable[[], None] | None
    direct_url: str | None = None
    """The node without the proxy in between (``None`` on the shared broker)."""
    ctl: Callable[..., str] | None = None
    """Runs ``rabbitmqctl`` on the private node with the given arguments (node-wide
    settings: memory watermark, max_message_size); ``None`` on the shared broker, whose
    settings no test may change."""


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
        _node = Node(
            urlunsplit(parts._replace(netloc=netloc)),
            proxy,
            process.restart,
            process.url,
            _controller(process),
        )
        return _node


def _controller(process: processes.LocalProcess) -> Callable[..., str]:
    env = process.env
    # Beside the rabbitmq-server script the harness ran; the node's own cookie ($HOME).
    binary = str(Path(process.argv[0]).with_name("rabbitmqctl"))
    command = [binary, "-n", env["RABBITMQ_NODENAME"]]

    def ctl(*args: str) -> str:
        done = subprocess.run(
            [*command, *args], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout

    return ctl


def delete_underneath(url: str) -> Callable[[str, str], Awaitable[None]]:
    """The conformance target's ``delete_underneath`` hook: deletes the group's queue
    ``<topic>/<group>`` on the broker at ``url`` with a raw aio-pika client, consumers
    and messages and all (what an operator's ``rabbitmqctl delete_queue`` does)."""

    async def delete(topic: str, group: str) -> None:
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            await channel.queue_delete(f"{topic}/{group}")
        finally:
            await connection.close()

    return delete
