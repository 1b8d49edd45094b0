"""What ``eventbus run`` serves beside the bus: the probes (``--health-port``), the
Prometheus endpoint (``--metrics-port``), and a worker's link to its ``--workers``
supervisor (hidden options: a worker reports its probe port there and stops when the
supervisor is gone)."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import typer

from eventbus.bus import EventBus
from eventbus.cli._common import EXIT_UNKNOWN_SCHEME, fail
from eventbus.probes import PROMETHEUS_EXTRA, serve_probes

log = logging.getLogger("eventbus.cli")

HealthPortOption = Annotated[
    int | None,
    typer.Option(
        "--health-port",
        min=0,
        max=65535,
        show_default=False,
        help="Serve /livez and /readyz (Kubernetes probes) on this port",
    ),
]
MetricsPortOption = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=0,
        max=65535,
        show_default=False,
        help="Serve /metrics (prometheus-client's default registry) on this port; "
        "may equal --health-port",
    ),
]
ProbeHostOption = Annotated[
    str, typer.Option("--probe-host", help="Address the probe and metrics ports listen on")
]
WorkersOption = Annotated[
    int,
    typer.Option(
        "--workers",
        min=1,
        help="Run N processes sharing the subscriptions' groups, "
        "restarting one that dies; SIGTERM drains them all",
    ),
]
ReloadOption = Annotated[
    bool,
    typer.Option(
        "--reload",
        help="Development: restart the worker(s) when a .py file under "
        "the current directory changes (needs eventbus[reload])",
    ),
]
SupervisorFdOption = Annotated[int | None, typer.Option("--supervisor-fd", hidden=True)]
# A worker of `--workers N --metrics-port M`: count for the supervisor's /metrics, serve none.
CountMetricsOption = Annotated[bool, typer.Option("--count-metrics", hidden=True)]
WorkerIndexOption = Annotated[int | None, typer.Option("--worker-index", hidden=True)]


@dataclass(frozen=True, slots=True)
class ServeOptions:
    """The ports to serve beside the bus, and a worker's link to its supervisor."""

    health_port: int | None = None
    metrics_port: int | None = None
    host: str = "0.0.0.0"
    supervisor_fd: int | None = None


def require_prometheus(metrics_port: int | None) -> None:
    """Exit 3, naming the extra, when ``--metrics-port`` is given without prometheus-client."""
    if metrics_port is not None and importlib.util.find_spec("prometheus_client") is None:
        fail(
            f"--metrics-port needs prometheus-client, which is not installed: {PROMETHEUS_EXTRA}",
            EXIT_UNKNOWN_SCHEME,
        )


def count_for_metrics(bus: EventBus) -> None:
    """Count ``bus`` into prometheus-client's default registry (:mod:`eventbus.metrics`),
    which ``/metrics`` serves, unless the service already instruments it."""
    from eventbus.metrics import Metrics, is_instrumented

    if not is_instrumented(bus):
        Metrics().instrument(bus)


def label_worker(index: int) -> None:
    """Prefix every log line of this process with ``worker-N`` (a worker of ``--workers``)."""
    prefix = f"worker-{index} "

    def tag(record: logging.LogRecord) -> bool:
        if not record.name.startswith(prefix):
            record.name = prefix + record.name
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)


async def serve_with_probes(
    bus: EventBus, options: ServeOptions, serve: Callable[[EventBus], Awaitable[int]]
) -> int:
    """``serve(bus)`` with the probe and metrics ports open around it (they answer from
    before the bus starts until it has stopped: ``/readyz`` says 503 meanwhile)."""
    async with serve_probes(
        bus, health_port=options.health_port, metrics_port=options.metrics_port, host=options.host
    ) as probes:
        if options.supervisor_fd is not None:
            _link_to_supervisor(options.supervisor_fd, probes.health_port)
        return await serve(bus)


def _link_to_supervisor(fd: int, health_port: int | None) -> None:
    """Tell the supervisor the probe port, then watch the link: when the supervisor is
    gone (killed without a chance to drain us), stop as on SIGTERM instead of running on
    unsupervised."""
    link = socket.socket(fileno=fd)
    link.setblocking(False)
    link.send(f"{health_port or 0}\n".encode())
    loop = asyncio.get_running_loop()

    def readable() -> None:
        try:
            data = link.recv(64)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            return
        loop.remove_reader(fd)
        log.warning("the --workers supervisor is gone; stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    loop.add_reader(fd, readable)
