"""What the conformance suite runs against: a broker URL plus optional fault hooks."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

if TYPE_CHECKING:
    from eventbus.adapter import Adapter

AdapterFactory = Callable[[str], "Adapter"]
"""Builds an (unconnected) adapter from a URL: an adapter class, or any function."""


@runtime_checkable
class FaultInjector(Protocol):
    """Breaks the path between clients and the broker, for the reconnect cases.

    The memory adapter implements it in-process; real brokers get it from the
    TCP fault proxy (:mod:`eventbus.testing.faultproxy`) placed in front of them.

    An injector may also have ``async def heal()``, ending every fault at once (a
    refusal, a freeze): the suite calls it, when there is one, as each case ends, so
    a case that fails mid-fault does not leave the next case a broken path.
    """

    async def drop_connections(self) -> None:
        """Close every open client connection at once (the broker stays up)."""

    async def refuse_connections(self, seconds: float) -> None:
        """Drop every connection and refuse new ones for ``seconds``, then accept again."""

    async def freeze(self, seconds: float | None = None) -> None:
        """Stop forwarding anything without closing a connection (a half-open path:
        a frozen NAT entry, a pulled cable); new connections are accepted and never
        answered. ``seconds`` thaws it again after that long; ``None`` until :meth:`thaw`."""

    async def thaw(self) -> None:
        """Forward again what a :meth:`freeze` held back, on the same connections."""


@dataclass(frozen=True)
class ShortLease:
    """A URL of the target whose lease is short (Kafka ``max_poll_interval_ms``, SQS
    visibility timeout, JetStream ``ack_wait``, RabbitMQ ``consumer_timeout``, Redis
    Streams claim time), for the slow-handler case: a handler running ``seconds``
    several times over must still run once."""

    url: str
    seconds: float


@dataclass
class BrokerTarget:
    """One broker the conformance suite runs on.

    - ``url``: what every adapter of the run is built from; all of them must reach
      the same broker (cases open several).
    - ``adapter``: builds the adapter from a URL (your adapter class, or a function).
      ``None`` looks the URL's scheme up in the ``eventbus.adapters`` entry points, as
      ``EventBus.from_url`` does, which needs your package installed
      (``pip install -e .``); with a factory it need not be. The crash-loop case
      starts consumer processes, so it runs only with a factory they can import (a
      module-level class or function) or a registered scheme.
    - ``faults``: fault hooks reaching the same broker through ``faulty_url``
      (``None`` skips the reconnect cases with the reason).
    - ``scale``: multiplies message counts of heavy cases (below 1 for slow brokers).
    - ``limits``: case name -> reason, for cases this particular broker cannot
      pass although the adapter's capabilities claim them (e.g. an emulator's gap).
      Each one is skipped with its reason and must be documented.
    - ``restart``: stops the broker and starts it again on the same data (a plain
      function is run in a thread, a coroutine function in the case's loop);
      ``None`` skips the restart case with the reason.
    - ``in_process``: the broker lives inside the test process (memory), so a
      consumer in another process cannot reach it; the crash-loop case, which kills
      consumer processes, is skipped saying so.
    - ``delete_underneath``: deletes what a group consumes through on the broker (its
      consumer, queue, stream or consumer group) while it is subscribed, given
      ``(topic, group)``; ``None`` skips the resource-deleted case with the reason.
    - ``short_lease``: see :class:`ShortLease`; ``None`` skips the slow-handler case
      (only for brokers without a lease: ``Capabilities.lease`` false).
    """

    name: str
    url: str
    faults: FaultInjector | None = None
    faulty_url: str | None = None
    scale: float = 1.0
    limits: Mapping[str, str] = field(default_factory=dict)
    restart: Callable[[], None] | Callable[[], Awaitable[None]] | None = None
    in_process: bool = False
    delete_underneath: Callable[[str, str], Awaitable[None]] | None = None
    short_lease: ShortLease | None = None
    adapter: AdapterFactory | None = None  # last: the fields before it keep their places

    def count(self, n: int, minimum: int = 5) -> int:
        """``n`` scaled for this broker, never below ``minimum``."""
        return max(minimum, int(n * self.scale))

    def make_adapter(self, url: str | None = None) -> Adapter:
        """A new, unconnected adapter for ``url`` (default: :attr:`url`), built by
        :attr:`adapter` or, without one, by the scheme's registered adapter."""
        if self.adapter is not None:
            return self.adapter(url or self.url)
        from eventbus.registry_adapters import adapter_from_url

        return adapter_from_url(url or self.url)

    def adapter_path(self) -> str | None:
        """``"module:name"`` another process imports :attr:`adapter` by: ``""`` when
        there is no factory (the scheme is registered), ``None`` when the factory
        cannot be imported (a lambda, a local function)."""
        if self.adapter is None:
            return ""
        module = getattr(self.adapter, "__module__", None)
        name = getattr(self.adapter, "__qualname__", "")
        if not module or not name or "<" in name or module == "__main__":
            return None
        try:
            found = import_adapter(f"{module}:{name}")
        except (ImportError, AttributeError, TypeError):
            return None
        return f"{module}:{name}" if found is self.adapter else None


def import_adapter(path: str) -> AdapterFactory:
    """The factory :meth:`BrokerTarget.adapter_path` named (``"module:qualname"``)."""
    module, _, name = path.partition(":")
    found: object = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    if not callable(found):
        raise TypeError(f"{path!r} names {type(found).__name__}, not an adapter factory")
    return cast(AdapterFactory, found)
