"""Ports for test servers that must be bindable again after a pause.

A port the kernel hands out for ``bind(0)`` lies in the ephemeral range, the
same range it draws the local ports of outgoing connections from. A server that
closes its listener for a while (the fault proxy refusing connections, a broker
restarted in place) may then find its port taken: by any outgoing connection, or
by a client retrying ``connect()`` to that very port, which on loopback can pick
it as its own source port and connect to itself (TCP simultaneous open). The
listener cannot come back until that socket closes. :func:`stable_port` picks a
free port *below* the ephemeral range, where the kernel never allocates.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["ephemeral_range", "stable_port"]

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000  # well above the well-known and registered services most machines run


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux's default elsewhere)."""
    try:
        low, high = (int(part) for part in _RANGE_FILE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def stable_port(host: str = "127.0.0.1") -> int:
    """A port free a moment ago that no outgoing connection will take meanwhile.

    Chosen at random below the ephemeral range (so parallel test processes
    rarely try the same one) and checked by binding it; where the machine leaves
    no room below its range, a kernel-chosen port is returned.
    """
    low, _ = ephemeral_range()
    candidates = range(_LOWEST, low)
    rng = random.SystemRandom()
    for _ in range(200 if len(candidates) > 100 else 0):
        port = rng.choice(candidates)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
