"""``eventbus run --workers N`` (and ``--reload``): N processes running the same service,
so they share each subscription's group, under a supervisor.

The supervisor imports nothing of the service's but checks it loads; it starts each
worker as ``python -m eventbus run`` in a session of its own (a terminal's Ctrl-C reaches
the supervisor alone, which then stops each worker once), restarts a worker that dies,
with a backoff that resets once a worker has lived a while, and logs why; on
SIGTERM/SIGINT it forwards SIGTERM to every worker and waits for them to drain (a second
signal is forwarded too, forcing them). Each worker holds one end of a socket pair: it
reports its probe port there, and stops when the supervisor's end closes.

``--health-port``: the supervisor's ``/readyz`` is ready when every worker runs and each
worker's own ``/readyz`` (on a loopback port it reported) is. ``--metrics-port``: the
workers write their values under ``$PROMETHEUS_MULTIPROC_DIR`` (a fresh directory unless
set), and the supervisor's ``/metrics`` adds them up, as prometheus-client's multiprocess
mode does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from eventbus.backoff import Backoff
from eventbus.cli._common import EXIT_UNKNOWN_SCHEME, fail
from eventbus.probes import JSON, LIVEZ, READYZ, TEXT, Answer, Probes, Route, serve_probes

log = logging.getLogger("eventbus.cli")

RESTART = Backoff(initial=0.5, max_delay=30.0, jitter=0.0)
"""Delays before restarting a worker that died, growing while it keeps dying young."""
STEADY_AFTER = 30.0
"""Seconds a worker must have lived for its death to start a new backoff series."""
PROBE_TIMEOUT = 3.0
RELOAD_EXTRA = 'pip install "eventbus[reload]"'


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """How to run the workers: the ``eventbus run`` options each one gets."""

    target: str
    workers: int
    log_level: str
    url: str | None = None
    health_port: int | None = None
    metrics_port: int | None = None
    host: str = "0.0.0.0"
    reload: bool = False

    def argv(self, index: int, fd: int) -> list[str]:
        argv = [
            sys.executable,
            "-m",
            "eventbus",
            "run",
            self.target,
            "--log-level",
            self.log_level,
            "--worker-index",
            str(index),
            "--supervisor-fd",
            str(fd),
        ]
        if self.url is not None:
            argv += ["--url", self.url]
        if self.health_port is not None:
            argv += ["--health-port", "0", "--probe-host", "127.0.0.1"]
        if self.metrics_port is not None:
            argv += ["--count-metrics"]  # into $PROMETHEUS_MULTIPROC_DIR; the supervisor serves
        return argv


@dataclass
class Worker:
    """One worker process and what the supervisor knows of it."""

    index: int
    process: asyncio.subprocess.Process | None = None
    probe_port: int | None = None
    started_at: float = 0.0
    restarting: bool = False  # asked to stop by a reload: start again, not a death
    # Set by a reload: a worker waiting out its restart delay (its code did not even
    # import) starts again at once with the changed code.
    reloaded: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    link: socket.socket | None = field(default=None, repr=False)
    reading: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)


class Supervisor:
    """Runs :class:`WorkerPlan` until a signal; :meth:`run` returns the exit code."""

    def __init__(self, plan: WorkerPlan) -> None:
        self.plan = plan
        self.workers = [Worker(i) for i in range(1, plan.workers + 1)]
        self.env = dict(os.environ)
        self.cwd = os.path.join(os.getcwd(), "")
        self._stopping = asyncio.Event()
        self._signals: list[int] = []
        self.probes: Probes | None = None

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        routes: dict[str, Route] | None = None
        if self.plan.health_port is not None:
            routes = {LIVEZ: self._livez, READYZ: self._readyz}
        async with serve_probes(
            None,
            health_port=self.plan.health_port,
            metrics_port=self.plan.metrics_port,
            host=self.plan.host,
            health=routes,
        ) as self.probes:
            log.info(
                "supervising %d worker(s) of %s%s",
                len(self.workers),
                self.plan.target,
                " (reloading on changes)" if self.plan.reload else "",
            )
            keepers = [asyncio.create_task(self._keep(w)) for w in self.workers]
            watcher = asyncio.create_task(self._watch()) if self.plan.reload else None
            await self._stopping.wait()
            log.warning(
                "%s received: draining %d worker(s)",
                signal.Signals(self._signals[0]).name,
                len(self.workers),
            )
            for worker in self.workers:
                worker.signal(signal.SIGTERM)
            if watcher is not None:
                watcher.cancel()
            codes = await asyncio.gather(*keepers)
        forced = len(self._signals) > 1
        if forced:
            return 128 + self._signals[-1]
        log.info("every worker stopped")
        return 0 if all(code in (0, None) for code in codes) else 1

    def stop(self) -> None:
        """Drain the workers and return from :meth:`run`, as on SIGTERM."""
        self._on_signal(signal.SIGTERM)

    def _on_signal(self, signum: int) -> None:
        self._signals.append(signum)
        if len(self._signals) == 1:
            self._stopping.set()
        else:
            log.warning("%s received again: forcing the workers' exit", signal.Signals(signum).name)
            for worker in self.workers:
                worker.signal(signal.SIGTERM)

    async def _keep(self, worker: Worker) -> int | None:
        """Run ``worker`` until the supervisor stops, restarting it when it dies; returns
        its last exit code."""
        delays = iter(RESTART)
        code: int | None = None
        while not self._stopping.is_set():
            await self._spawn(worker)
            assert worker.process is not None
            code = await worker.process.wait()
            lived = time.monotonic() - worker.started_at
            self._forget(worker)
            if self._stopping.is_set():
                break
            if worker.restarting:
                worker.restarting = False
                delays = iter(RESTART)
                continue
            if lived >= STEADY_AFTER:
                delays = iter(RESTART)
            delay = next(delays)
            log.error(
                "worker %d (pid %d) %s after %.1fs; restarting it in %.1fs",
                worker.index,
                worker.process.pid,
                describe_exit(code),
                lived,
                delay,
            )
            worker.reloaded.clear()
            waits = [
                asyncio.ensure_future(self._stopping.wait()),
                asyncio.ensure_future(worker.reloaded.wait()),
            ]
            try:
                await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
            if worker.reloaded.is_set():
                worker.restarting, delays = False, iter(RESTART)
        return code

    async def _spawn(self, worker: Worker) -> None:
        ours, theirs = socket.socketpair()
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *self.plan.argv(worker.index, theirs.fileno()),
                env=self.env,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
        finally:
            theirs.close()
        worker.link, worker.probe_port = ours, None
        worker.started_at = time.monotonic()
        log.info("worker %d started (pid %d)", worker.index, worker.process.pid)
        worker.reading = asyncio.create_task(self._read_port(worker, ours))

    async def _read_port(self, worker: Worker, link: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            data = await loop.sock_recv(link, 64)
            if worker.link is link and data.strip().isdigit():
                worker.probe_port = int(data.strip()) or None

    def _forget(self, worker: Worker) -> None:
        if worker.link is not None:
            worker.link.close()
            worker.link = None
        worker.probe_port = None
        if worker.process is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Its live gauges leave the sum; its counters stay counted.
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.process.pid)  # type: ignore[no-untyped-call]

    async def _watch(self) -> None:
        from watchfiles import PythonFilter, awatch

        async for changes in awatch(
            self.cwd, watch_filter=PythonFilter(), stop_event=self._stopping
        ):
            names = sorted({path.removeprefix(self.cwd) for _, path in changes})
            log.warning("reloading: %s changed", ", ".join(names[:5]))
            for worker in self.workers:
                worker.restarting = True
                worker.reloaded.set()
                worker.signal(signal.SIGTERM)

    async def _livez(self) -> Answer:
        return 200, TEXT, b"ok\n"

    async def _readyz(self) -> Answer:
        states = await asyncio.gather(*(self._worker_ready(w) for w in self.workers))
        problems = [f"worker {s['index']}: {s['detail']}" for s in states if not s["ok"]]
        body = {"ok": not problems, "detail": "; ".join(problems), "workers": states}
        return (503 if problems else 200), JSON, json.dumps(body).encode()

    async def _worker_ready(self, worker: Worker) -> dict[str, Any]:
        state: dict[str, Any] = {"index": worker.index, "pid": worker.pid, "ok": False}
        running = worker.process is not None and worker.process.returncode is None
        if not running or worker.probe_port is None:
            return {**state, "detail": "starting" if running else "not running"}
        try:
            status, body = await asyncio.wait_for(_get(worker.probe_port, READYZ), PROBE_TIMEOUT)
            answer = json.loads(body)
        except (OSError, TimeoutError, ValueError) as exc:
            return {**state, "detail": f"its /readyz did not answer ({type(exc).__name__})"}
        return {
            **state,
            "ok": status == 200,
            "detail": answer.get("detail", ""),
            "subscriptions": answer.get("subscriptions", []),
        }


async def _get(port: int, path: str) -> tuple[int, bytes]:
    """GET ``path`` from a worker's probe server on the loopback; (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def describe_exit(code: int | None) -> str:
    """``was killed by SIGKILL``, ``exited 1 (a subscription died for good)``..."""
    if code is None:
        return "is gone"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    if code == 1:
        return "exited 1 (a subscription died for good)"
    return f"exited {code}"


def run_workers(plan: WorkerPlan, check: Callable[[], object]) -> int:
    """Supervise ``plan``'s workers until a signal; the exit code of ``eventbus run``.

    ``check()`` loads the service once here first, so that a module that does not import
    fails with its one-line error instead of a crash loop of workers; it runs after
    ``$PROMETHEUS_MULTIPROC_DIR`` is set, since prometheus-client reads it on import.
    """
    if plan.reload and not _has("watchfiles"):
        fail(
            f"--reload needs watchfiles, which is not installed: {RELOAD_EXTRA}",
            EXIT_UNKNOWN_SCHEME,
        )
    own_dir = None
    if plan.metrics_port is not None and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_dir = tempfile.mkdtemp(prefix="eventbus-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_dir
    try:
        check()
        supervisor = Supervisor(plan)
        with asyncio.Runner() as runner:
            return runner.run(supervisor.run())
    finally:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
