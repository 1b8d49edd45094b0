"""What the conformance suite runs against: a broker URL plus optional fault hooks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@runtime_checkable
class FaultInjector(Protocol):
    """Breaks the path between clients and the broker, for the reconnect cases.

    The memory adapter implements it in-process; real brokers get it from the
    TCP fault proxy (:mod:`eventbus.testing.faultproxy`) placed in front of them.
    """

    async def drop_connections(self) -> None:
        """Close every open client connection at once (the broker stays up)."""

    async def refuse_connections(self, seconds: float) -> None:
        """Drop every connection and refuse new ones for ``seconds``, then accept again."""


@dataclass
class BrokerTarget:
    """One broker the conformance suite runs on.

    - ``url``: what ``EventBus.from_url`` / the adapter registry is given; every
      adapter built from it must reach the same broker (cases open several).
    - ``faults``: fault hooks reaching the same broker through ``faulty_url``
      (``None`` skips the reconnect cases with the reason).
    - ``scale``: multiplies message counts of heavy cases (below 1 for slow brokers).
    - ``limits``: case name -> reason, for cases this particular broker cannot
      pass although the adapter's capabilities claim them (e.g. an emulator's gap).
      Each one is skipped with its reason and must be documented.
    - ``restart``: stops the broker and starts it again on the same data (a plain
      function is run in a thread, a coroutine function in the case's loop);
      ``None`` skips the restart case with the reason.
    """

    name: str
    url: str
    faults: FaultInjector | None = None
    faulty_url: str | None = None
    scale: float = 1.0
    limits: Mapping[str, str] = field(default_factory=dict)
    restart: Callable[[], None] | Callable[[], Awaitable[None]] | None = None

    def count(self, n: int, minimum: int = 5) -> int:
        """``n`` scaled for this broker, never below ``minimum``."""
        return max(minimum, int(n * self.scale))
