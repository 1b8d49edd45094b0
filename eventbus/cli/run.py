"""``eventbus run``: serve a bus until a signal, with readable logs and a forced second stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Annotated

import typer

from eventbus.bus import EventBus
from eventbus.cli._common import EXIT_USAGE, UrlOption, fail, load_bus, resolve_url, run_async
from eventbus.cli.serving import (
    CountMetricsOption,
    HealthPortOption,
    MetricsPortOption,
    ProbeHostOption,
    ReloadOption,
    ServeOptions,
    SupervisorFdOption,
    WorkerIndexOption,
    WorkersOption,
    count_for_metrics,
    label_worker,
    require_prometheus,
    serve_with_probes,
)
from eventbus.cli.workers import WorkerPlan, run_workers
from eventbus.errors import mask_url

log = logging.getLogger("eventbus.cli")

LOG_LEVELS = ("debug", "info", "warning", "error")

QUIET_LOGGERS = (
    "aiokafka",
    "kafka",
    "aio_pika",
    "aiormq",
    "nats",
    "redis",
    "botocore",
    "boto3",
    "urllib3",
    "asyncio",
)
"""Client libraries whose INFO lines (joins, coordinator chatter) stay hidden unless
``--log-level debug``."""

# What Context.logger binds on each record, shown as key=value after the message.
CONTEXT_FIELDS = (
    ("event_id", "event"),
    ("correlation_id", "correlation"),
    ("group", "group"),
    ("attempt", "attempt"),
)

CLOSE_TIMEOUT = 5.0
HARD_EXIT_AFTER = 2 * CLOSE_TIMEOUT + 2.0
"""Seconds after a second signal at which the process exits whatever is still running."""
"""Seconds a forced exit still gives the adapter to close its clients."""


class ContextFormatter(logging.Formatter):
    """``time level logger message [event=... correlation=... group=... attempt=...]``.

    The bracket lists the handler context a record carries (``ctx.logger`` binds
    it); records without any show none.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        bound = [
            f"{label}={getattr(record, name)}"
            for name, label in CONTEXT_FIELDS
            if getattr(record, name, None) not in (None, "")
        ]
        if not bound:
            return text
        # The bracket goes on the message line, before any traceback.
        first, newline, rest = text.partition("\n")
        return f"{first} [{' '.join(bound)}]{newline}{rest}"


def configure_logging(level: str) -> None:
    """Log to stderr with :class:`ContextFormatter`; quiet client libraries below debug."""
    handler = logging.StreamHandler()
    handler.setFormatter(ContextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet = logging.NOTSET if level == "debug" else logging.WARNING
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(quiet)


def run(
    target: Annotated[str, typer.Argument(help="module:attribute of the EventBus, e.g. app:bus")],
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level",
            help="debug, info, warning or error; client libraries' INFO lines show only at debug",
            case_sensitive=False,
        ),
    ] = "info",
    url: UrlOption = None,
    health_port: HealthPortOption = None,
    metrics_port: MetricsPortOption = None,
    probe_host: ProbeHostOption = "0.0.0.0",
    workers: WorkersOption = 1,
    reload: ReloadOption = False,
    supervisor_fd: SupervisorFdOption = None,
    worker_index: WorkerIndexOption = None,
    count_metrics: CountMetricsOption = False,
) -> None:
    """Run a service's subscriptions until SIGTERM/SIGINT, then shut down gracefully.

    The first signal lets in-flight handlers finish (up to the bus's
    shutdown_timeout); a second one forces the exit, still closing the broker clients.
    Exits 0 after a signal, 1 when a subscription died for good (so a supervisor
    restarts the service instead of it sitting idle), 128 + N when forced by signal N.
    """
    level = log_level.lower()
    if level not in LOG_LEVELS:
        fail(f"--log-level {log_level!r} is not one of {', '.join(LOG_LEVELS)}", EXIT_USAGE)
    configure_logging(level)
    require_prometheus(metrics_port)
    if workers > 1 or reload:
        plan = WorkerPlan(
            target, workers, level, url, health_port, metrics_port, probe_host, reload
        )
        raise typer.Exit(run_workers(plan, lambda: _check_shareable(target, url, workers)))
    if worker_index is not None:
        label_worker(worker_index)
    bus = load_bus(target, url)
    if metrics_port is not None or count_metrics:
        count_for_metrics(bus)  # /metrics shows the bus's own instruments
    if url is not None and bus.adapter.url != resolve_url(url):
        log.warning(
            "%s is built on %s, not on --url %s: make it with EventBus.from_env() to take --url",
            target,
            mask_url(bus.adapter.url),
            mask_url(url),
        )
    typer.echo(f"running {target} on {mask_url(bus.adapter.url)}", err=True)
    options = ServeOptions(health_port, metrics_port, probe_host, supervisor_fd)
    forced = run_async(lambda: serve_with_probes(bus, options, serve), loop_factory=SignalLoop)
    if forced:
        raise typer.Exit(code=128 + forced)


def _check_shareable(target: str, url: str | None, workers: int) -> None:
    """``--workers N`` needs a broker the N processes share: not one inside each."""
    bus = load_bus(target, url)
    if workers > 1 and bus.adapter.url.startswith("memory:"):
        fail(
            f"--workers {workers} cannot share {mask_url(bus.adapter.url)}: the in-memory "
            "broker lives inside one process, so each worker would get a broker of its own; "
            "point --url or $EVENTBUS_URL at a real broker",
            EXIT_USAGE,
        )


SIGNALS = (signal.SIGTERM, signal.SIGINT)


class SignalLoop(asyncio.SelectorEventLoop):
    """An event loop on which ``eventbus run`` sees SIGTERM/SIGINT before the bus does.

    ``bus.run()`` installs its own handlers and removes them as it stops, which would
    hand a second signal to the default action (killed, clients left open). Here the
    bus's handler is kept aside and called by :attr:`on_signal`'s owner, and the
    signal stays with the CLI until the loop closes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.on_signal: Callable[[int, Callable[[], object] | None], None] | None = None
        self._inner: dict[int, Callable[[], object]] = {}
        self._closing = False

    def add_signal_handler(self, sig: int, callback: Callable[..., object], *args: object) -> None:
        if sig in SIGNALS and not self._closing:
            self._inner[sig] = functools.partial(callback, *args)
            super().add_signal_handler(sig, self._dispatch, sig)
        else:
            super().add_signal_handler(sig, callback, *args)

    def remove_signal_handler(self, sig: int) -> bool:
        if sig in SIGNALS and not self._closing:
            return self._inner.pop(sig, None) is not None  # the CLI keeps the signal
        return super().remove_signal_handler(sig)

    def own_signals(self, on_signal: Callable[[int, Callable[[], object] | None], None]) -> None:
        """Call ``on_signal(signum, inner)`` for each signal; ``inner`` is the handler
        someone else installed for it (the bus's), or ``None``."""
        self.on_signal = on_signal
        for sig in SIGNALS:
            super().add_signal_handler(sig, self._dispatch, sig)

    def _dispatch(self, sig: int) -> None:
        if self.on_signal is not None:
            self.on_signal(sig, self._inner.get(sig))
        elif sig in self._inner:
            self._inner[sig]()

    def close(self) -> None:
        self._closing = True
        super().close()


async def serve(bus: EventBus) -> int:
    """Run ``bus`` until a signal; returns 0, or the number of the signal that forced the exit.

    ``bus.run()`` owns the lifecycle (start, graceful stop, failing when a
    subscription dies); the CLI sees its signals first, so that the first one says
    how long the stop may take and a second one cuts it short.
    """
    loop = asyncio.get_running_loop()
    received: list[int] = []
    second = asyncio.Event()
    task = asyncio.ensure_future(bus.run())

    def on_signal(signum: int, inner: Callable[[], object] | None) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) == 1:
            log.warning(
                "%s received: stopping; waiting up to %g s (shutdown_timeout) for "
                "in-flight handlers; send the signal again (Ctrl-C) to force",
                name,
                bus.shutdown_timeout,
            )
            if inner is not None:
                inner()  # the bus's own handler: its graceful stop
            else:
                task.cancel()  # bus.run() also stops gracefully on cancellation
        elif not second.is_set():
            log.warning("%s received again: forcing the exit; closing broker connections", name)
            second.set()
            # A client that swallows its cancellation (or a loop blocked by one) must
            # not keep the process alive: past the forced close's own bound, exit hard.
            hard = threading.Timer(HARD_EXIT_AFTER, _exit_now, (128 + signum,))
            hard.daemon = True
            hard.start()

    if isinstance(loop, SignalLoop):
        loop.own_signals(on_signal)
    forcing = asyncio.ensure_future(second.wait())
    try:
        await asyncio.wait([task, forcing], return_when=asyncio.FIRST_COMPLETED)
    finally:
        forcing.cancel()
    if second.is_set() and not task.done():
        await _force(bus, task)
        return received[-1]
    with contextlib.suppress(asyncio.CancelledError):
        await task  # a subscription that died raises here
    if received:
        log.info("stopped")
    return 0


def _exit_now(code: int) -> None:
    log.error("the forced stop did not finish within %g s; exiting now", HARD_EXIT_AFTER)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(code)


async def _force(bus: EventBus, task: asyncio.Future[None]) -> None:
    """Cut the graceful stop short, then still close the adapter's clients."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(task, CLOSE_TIMEOUT)
    try:
        await asyncio.wait_for(bus.adapter.close(), CLOSE_TIMEOUT)
    except Exception as exc:  # a forced exit reports, never hangs, on a broken close
        log.warning("closing the broker connection failed: %s", exc)
