"""``eventbus run``: serve a bus until a signal, with readable logs and a forced second stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Annotated

import typer

from eventbus.bus import EventBus
from eventbus.cli._common import EXIT_USAGE, UrlOption, fail, load_bus, run_async
from eventbus.errors import mask_url

log = logging.getLogger("eventbus.cli")

LOG_LEVELS = ("debug", "info", "warning", "error")

QUIET_LOGGERS = ("aiokafka", "kafka", "aio_pika", "aiormq", "nats", "redis", "botocore",
                 "boto3", "urllib3", "asyncio")
"""Client libraries whose INFO lines (joins, coordinator chatter) stay hidden unless
``--log-level debug``."""

# What Context.logger binds on each record, shown as key=value after the message.
CONTEXT_FIELDS = (("event_id", "event"), ("correlation_id", "correlation"),
                  ("group", "group"), ("attempt", "attempt"))

CLOSE_TIMEOUT = 5.0
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
        bound = [f"{label}={getattr(record, name)}" for name, label in CONTEXT_FIELDS
                 if getattr(record, name, None) not in (None, "")]
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
        typer.Option("--log-level", help="debug, info, warning or error; client libraries' "
                     "INFO lines show only at debug", case_sensitive=False),
    ] = "info",
    url: UrlOption = None,
) -> None:
    """Run a service's subscriptions until SIGTERM/SIGINT, then shut down gracefully.

    The first signal lets in-flight handlers finish (up to the bus's
    shutdown_timeout); a second one forces the exit, still closing the broker clients.
    """
    level = log_level.lower()
    if level not in LOG_LEVELS:
        fail(f"--log-level {log_level!r} is not one of {', '.join(LOG_LEVELS)}", EXIT_USAGE)
    configure_logging(level)
    bus = load_bus(target, url)
    typer.echo(f"running {target} on {mask_url(bus.adapter.url)}", err=True)
    forced = run_async(lambda: serve(bus))
    if forced:
        raise typer.Exit(code=128 + forced)


async def serve(bus: EventBus) -> int:
    """Run ``bus`` until a signal; returns 0, or the number of the signal that forced the exit.

    ``bus.run()`` owns the lifecycle (start, graceful stop, failing when a
    subscription dies); this only takes over its signals so that the first one
    says how long the stop may take and a second one cuts it short.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(bus.run())
    await asyncio.sleep(0)  # bus.run() installs its signal handlers before its first await
    received: list[int] = []
    second = asyncio.Event()

    def on_signal(signum: int) -> None:
        received.append(signum)
        name = signal.Signals(signum).name
        if len(received) == 1:
            log.warning("%s received: stopping; waiting up to %g s (shutdown_timeout) for "
                        "in-flight handlers; send the signal again (Ctrl-C) to force", name,
                        bus.shutdown_timeout)
            task.cancel()  # bus.run() stops gracefully on cancellation
            # bus.run() removes the signal handlers as it stops: take them back.
            loop.call_soon(install)
        elif not second.is_set():
            log.warning("%s received again: forcing the exit; closing broker connections", name)
            second.set()

    def install() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)

    install()
    try:
        forcing = asyncio.ensure_future(second.wait())
        try:
            await asyncio.wait([task, forcing], return_when=asyncio.FIRST_COMPLETED)
        finally:
            forcing.cancel()
        if second.is_set() and not task.done():
            await _force(bus, task)
            return received[-1]
        with contextlib.suppress(asyncio.CancelledError):
            await task  # a subscription that died raises here; a signal's cancel does not
        if received:
            log.info("stopped")
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def _force(bus: EventBus, task: asyncio.Future[None]) -> None:
    """Cut the graceful stop short, then still close the adapter's clients."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(task, CLOSE_TIMEOUT)
    try:
        await asyncio.wait_for(bus.adapter.close(), CLOSE_TIMEOUT)
    except Exception as exc:  # a forced exit reports, never hangs, on a broken close
        log.warning("closing the broker connection failed: %s", exc)
