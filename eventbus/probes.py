"""Kubernetes probes and the Prometheus scrape endpoint of a running bus.

``eventbus run --health-port N --metrics-port M`` serves them; a service that runs its bus
itself can too::

    async with bus, serve_probes(bus, health_port=8080, metrics_port=9090):
        await stopped.wait()

- ``/livez``: 200 while the event loop answers (a blocked loop answers nothing, and the
  kubelet's timeout then counts as a failure, which is the point).
- ``/readyz``: 200 when every subscription is attached and running, the broker answers
  its health check within ``check_timeout`` and no subscription is stalled (see
  ``bus.health()``); else 503. The body is JSON: ``ok``, ``detail`` and each
  subscription's state, error, backlog and idle time.
- ``/metrics``: prometheus-client's default registry in the text format, whatever
  registered there (eventbus's own instruments and the service's); under
  ``$PROMETHEUS_MULTIPROC_DIR`` the live processes' values added up, as prometheus-client's
  multiprocess mode does. Needs ``pip install "eventbus[prometheus]"``.

The server is a few lines of asyncio on the bus's own loop: no framework, no thread, so
the liveness answer is the loop's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventbus.errors import ConfigurationError

if TYPE_CHECKING:
    from eventbus.bus import EventBus

log = logging.getLogger("eventbus.probes")

LIVEZ = "/livez"
READYZ = "/readyz"
METRICS = "/metrics"

CHECK_TIMEOUT = 5.0
"""Seconds ``/readyz`` waits for ``bus.health()`` (the broker's answer) before it says
unready: a frozen broker must not hang the probe past the kubelet's own timeout."""

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
PROMETHEUS_EXTRA = 'pip install "eventbus[prometheus]"'

Answer = tuple[int, str, bytes]
"""Status, content type and body of one probe's answer."""
Route = Callable[[], Awaitable[Answer]]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_READ_TIMEOUT = 5.0
_MAX_HEAD = 16 * 1024


@dataclass(frozen=True, slots=True)
class Readiness:
    """What ``/readyz`` answers: ``ok`` and why not, with each subscription's health."""

    ok: bool
    detail: str
    subscriptions: list[dict[str, Any]]

    def answer(self) -> Answer:
        body = json.dumps(
            {"ok": self.ok, "detail": self.detail, "subscriptions": self.subscriptions}
        ).encode()
        return (200 if self.ok else 503), JSON, body


async def readiness(bus: EventBus, check_timeout: float = CHECK_TIMEOUT) -> Readiness:
    """Whether ``bus`` is ready for traffic: started, every subscription attached and
    running (not stalled, reconnecting or dead), and the broker answering within
    ``check_timeout`` seconds."""
    try:
        health = await asyncio.wait_for(bus.health(), check_timeout)
    except TimeoutError:
        return Readiness(
            False, f"the broker's health check did not answer within {check_timeout:g}s", []
        )
    subscriptions = [dataclasses.asdict(s) for s in health.subscriptions]
    problems = [health.detail] if health.detail else []
    attached, wanted = len(health.subscriptions), len(bus.subscriptions)
    if health.ok and attached < wanted:
        problems.append(f"{attached} of {wanted} subscription(s) attached")
    return Readiness(not problems, "; ".join(problems), subscriptions)


def health_routes(bus: EventBus, check_timeout: float = CHECK_TIMEOUT) -> dict[str, Route]:
    """``/livez`` and ``/readyz`` of ``bus``."""

    async def livez() -> Answer:
        return 200, TEXT, b"ok\n"

    async def readyz() -> Answer:
        return (await readiness(bus, check_timeout)).answer()

    return {LIVEZ: livez, READYZ: readyz}


def metrics_routes() -> dict[str, Route]:
    """``/metrics``: prometheus-client's default registry (aggregated over processes
    under ``$PROMETHEUS_MULTIPROC_DIR``). Raises ConfigurationError, naming the extra,
    when prometheus-client is not installed."""
    try:
        import prometheus_client
        from prometheus_client import multiprocess
    except ModuleNotFoundError as missing:
        raise ConfigurationError(
            f"serving /metrics needs prometheus-client ({missing.name} is missing): "
            f"{PROMETHEUS_EXTRA}"
        ) from missing

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Each process writes its values to files there; add them up per scrape.
        registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = prometheus_client.REGISTRY

    async def metrics() -> Answer:
        return (
            200,
            prometheus_client.CONTENT_TYPE_LATEST,
            prometheus_client.generate_latest(registry),
        )

    return {METRICS: metrics}


class ProbeServer:
    """A minimal HTTP/1.1 server answering GET and HEAD on ``routes`` (one request per
    connection), on the running event loop."""

    def __init__(self, routes: dict[str, Route], host: str, port: int, option: str) -> None:
        self.routes = routes
        self.host = host
        self.port = port
        self.option = option  # the CLI option that chose the port, for the error message
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; returns the port (the one bound, when 0 was asked)."""
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve {self.option} {self.port} on {self.host}: {exc.strerror or exc}; "
                "choose a free port (or stop what holds it)"
            ) from exc
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                return
            if len(head) > _MAX_HEAD:
                return
            method, path = _request_line(head)
            status, ctype, body = await self._answer(method, path)
            reason = _REASONS.get(status, "")
            lines = [
                f"HTTP/1.1 {status} {reason}",
                f"Content-Type: {ctype}",
                f"Content-Length: {len(body)}",
                "Cache-Control: no-store",
                "Connection: close",
                "",
                "",
            ]
            writer.write("\r\n".join(lines).encode())
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the prober went away: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, method: str, path: str) -> Answer:
        route = self.routes.get(path.split("?", 1)[0])
        if not method:
            return 400, TEXT, b"bad request\n"
        if route is None:
            return 404, TEXT, f"no such path; served: {', '.join(self.routes)}\n".encode()
        if method not in ("GET", "HEAD"):
            return 405, TEXT, b"only GET and HEAD\n"
        try:
            return await route()
        except Exception as exc:  # a probe that raises is unhealthy, never a dropped socket
            log.exception("probe %s failed", path)
            return 500, TEXT, f"{type(exc).__name__}: {exc}\n".encode()


def _request_line(head: bytes) -> tuple[str, str]:
    first = head.split(b"\r\n", 1)[0].decode("latin-1").split()
    if len(first) != 3 or not first[1].startswith("/"):
        return "", ""
    return first[0].upper(), first[1]


@dataclass
class Probes:
    """The ports :func:`serve_probes` bound (``None`` for what it does not serve)."""

    health_port: int | None = None
    metrics_port: int | None = None


@contextlib.asynccontextmanager
async def serve_probes(
    bus: EventBus | None,
    *,
    health_port: int | None = None,
    metrics_port: int | None = None,
    host: str = "0.0.0.0",
    check_timeout: float = CHECK_TIMEOUT,
    health: dict[str, Route] | None = None,
) -> AsyncIterator[Probes]:
    """Serve ``/livez`` and ``/readyz`` on ``health_port`` and ``/metrics`` on
    ``metrics_port`` (0: any free port; the same number for both: one server) while the
    block runs. ``health`` replaces the bus's own health routes (the ``--workers``
    supervisor answers for its workers; ``bus`` may then be ``None``)."""
    routes: dict[int, tuple[dict[str, Route], str]] = {}
    if health_port is not None:
        if health is None:
            if bus is None:
                raise ConfigurationError("serve_probes() needs a bus, or health routes")
            health = health_routes(bus, check_timeout)
        routes[health_port] = (health, "--health-port")
    if metrics_port is not None:
        served, option = routes.get(metrics_port, ({}, "--metrics-port"))
        if metrics_port == 0:  # two servers on two free ports
            routes[-1] = (metrics_routes(), "--metrics-port")
        else:
            routes[metrics_port] = ({**served, **metrics_routes()}, option)
    servers: list[ProbeServer] = []
    probes = Probes()
    try:
        for port, (table, option) in routes.items():
            server = ProbeServer(table, host, max(port, 0), option)
            bound = await server.start()
            servers.append(server)
            if LIVEZ in table:
                probes.health_port = bound
            if METRICS in table:
                probes.metrics_port = bound
            log.info("serving %s on %s:%d", ", ".join(table), host, bound)
        yield probes
    finally:
        for server in servers:
            await server.close()
