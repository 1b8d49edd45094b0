"""`eventbus run`: log lines carry the handler's context, client chatter stays quiet, the
first signal says how long the stop may take and a second one forces it, still closing
the broker clients; a subscription that died for good exits 1."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import eventbus

SERVICE = """
    import asyncio, logging, sys
    from eventbus import Context, Envelope, EventBus, MemoryAdapter

    class Spy(MemoryAdapter):
        async def close(self) -> None:
            print("adapter closed", file=sys.stderr, flush=True)
            await super().close()

    def make() -> EventBus:
        bus = EventBus(Spy("memory://svc"), source="svc", shutdown_timeout=30)

        @bus.subscribe("pings", group="svc", start_from="earliest")
        async def on_ping(envelope: Envelope, ctx: Context) -> None:
            ctx.logger.info("handling ping")
            await asyncio.Event().wait()  # hangs: only a forced exit ends it

        ping = Envelope.create(type="ping", source="test", data=b"{}", correlationid="flow-1")
        asyncio.run(MemoryAdapter("memory://svc").publish("pings", [ping]))
        logging.getLogger("aiokafka.consumer.group_coordinator").info("joined group chatter")
        return bus
"""


class Service:
    """`python -m eventbus run` in its own process, its stderr read line by line."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        name = f"svc_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(SERVICE))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eventbus", "run", f"{name}:make", *args],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._pumping = threading.Thread(target=self._pump, daemon=True)
        self._pumping.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line)

    def wait_for(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=deadline - time.monotonic())
            except queue.Empty:
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"no {text!r} within {timeout}s; got:\n{''.join(self.lines)}")

    def rest(self) -> str:
        if self.proc.poll() is not None:
            self._pumping.join(timeout=10)  # everything the process wrote is queued
        while not self._queue.empty():
            self.lines.append(self._queue.get())
        return "".join(self.lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


Start = Callable[..., Service]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Start]:
    started: list[Service] = []

    def start(*args: str) -> Service:
        started.append(Service(tmp_path, *args))
        return started[-1]

    yield start
    for svc in started:
        svc.stop()


def test_log_lines_carry_event_correlation_group_and_attempt(service: Start) -> None:
    svc = service()
    line = svc.wait_for("handling ping")
    assert " INFO eventbus.handler handling ping [event=" in line
    assert "correlation=flow-1 group=svc attempt=1]" in line
    svc.proc.send_signal(signal.SIGINT)
    svc.wait_for("forc")  # the hung handler: the first signal says how to force
    svc.proc.send_signal(signal.SIGINT)
    assert svc.proc.wait(timeout=20) == 128 + signal.SIGINT
    assert "joined group chatter" not in svc.rest()


def test_client_library_chatter_shows_at_debug(service: Start) -> None:
    svc = service("--log-level", "debug")
    svc.wait_for("joined group chatter")
    svc.wait_for("handling ping")


def test_first_signal_says_how_long_a_second_forces_and_clients_still_close(service: Start) -> None:
    svc = service()
    svc.wait_for("handling ping")
    svc.proc.send_signal(signal.SIGTERM)
    first = svc.wait_for("SIGTERM received")
    assert "waiting up to 30 s (shutdown_timeout)" in first
    assert "send the signal again (Ctrl-C) to force" in first
    started = time.monotonic()
    svc.proc.send_signal(signal.SIGTERM)
    svc.wait_for("SIGTERM received again: forcing the exit")
    assert svc.proc.wait(timeout=20) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 15, "the forced exit waited for shutdown_timeout"
    assert "adapter closed" in svc.rest()
    assert "Traceback" not in svc.rest()


def test_bad_log_level_is_a_usage_error(service: Start) -> None:
    svc = service("--log-level", "chatty")
    assert svc.proc.wait(timeout=20) == 2
    assert "'chatty' is not one of debug, info, warning, error" in svc.rest()


def test_url_a_service_ignores_is_pointed_out(service: Start) -> None:
    """SERVICE builds its bus on memory://svc whatever --url says: run says so."""
    svc = service("--url", "memory://elsewhere")
    line = svc.wait_for("is built on memory://svc, not on --url memory://elsewhere")
    assert "EventBus.from_env()" in line
    svc.wait_for("handling ping")  # serving: the signal handlers are in place
    svc.proc.send_signal(signal.SIGTERM)
    svc.wait_for("SIGTERM received")
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.proc.wait(timeout=20) == 128 + signal.SIGTERM


# -- a subscription that died for good (the hardening work) ------------------------------

DEAD_SERVICE = """
    from eventbus import ConfigurationError, EventBus, MemoryAdapter, Subscription

    class Broken(Subscription):
        def __aiter__(self):
            return self

        async def __anext__(self):
            raise OSError("client library hiccup (not translated)")

        async def close(self):
            pass

    class Adapter(MemoryAdapter):
        subscribes = 0

        async def subscribe(self, topic, options):
            Adapter.subscribes += 1
            if Adapter.subscribes > 1:
                raise ConfigurationError(f"topic {topic!r} no longer exists")
            return Broken()

    bus = EventBus(Adapter("memory://svc"), source="svc")

    @bus.subscribe("pings", group="svc")
    async def on_ping(envelope) -> None:
        pass
"""


def test_cli_run_exits_non_zero_when_a_subscription_dies_for_good(tmp_path: Path) -> None:
    (tmp_path / "deadsvc.py").write_text(textwrap.dedent(DEAD_SERVICE))
    package_root = Path(eventbus.__file__).resolve().parent.parent  # the eventbus under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(package_root)])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventbus.cli", "run", "deadsvc:bus"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert "pings/svc" in err and "no longer exists" in err


SILENT_SERVICE = """
    import asyncio, sys
    from eventbus import EventBus, MemoryAdapter

    class Silent(MemoryAdapter):
        '''A broker that took the TCP connection and never answers; its client even
        swallows cancellation (as a hung client library can).'''

        async def connect(self) -> None:
            print("connecting", file=sys.stderr, flush=True)
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    if STUBBORN:
                        continue
                    raise

    def make() -> EventBus:
        bus = EventBus(Silent("memory://silent"), source="svc", start_timeout=600)

        @bus.subscribe("pings", group="svc")
        async def on_ping(envelope) -> None:
            pass

        return bus
"""


def _silent_service(tmp_path: Path, stubborn: bool) -> Service:
    name = f"silent_{uuid.uuid4().hex[:8]}"
    source = textwrap.dedent(SILENT_SERVICE).replace("STUBBORN", str(stubborn))
    (tmp_path / f"{name}.py").write_text(source)
    svc = Service.__new__(Service)
    svc.proc = subprocess.Popen(
        [sys.executable, "-m", "eventbus", "run", f"{name}:make"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        stderr=subprocess.PIPE,
        text=True,
    )
    svc.lines, svc._queue = [], queue.Queue()
    svc._pumping = threading.Thread(target=svc._pump, daemon=True)
    svc._pumping.start()
    return svc


def test_a_signal_while_connecting_to_a_silent_broker_stops_at_once(tmp_path: Path) -> None:
    """A broker that accepts TCP and never speaks the protocol must not make the service
    deaf to SIGTERM until start_timeout: the signal cuts the start short."""
    svc = _silent_service(tmp_path, stubborn=False)
    try:
        svc.wait_for("connecting")
        started = time.monotonic()
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 10, "SIGTERM waited for the start to time out"
    finally:
        svc.stop()


def test_a_second_signal_exits_even_when_a_client_swallows_cancellation(tmp_path: Path) -> None:
    """A client that ignores its cancellation could keep the process alive after the
    forced stop (asyncio waits for every task at exit): a hard deadline ends it."""
    svc = _silent_service(tmp_path, stubborn=True)
    try:
        svc.wait_for("connecting")
        svc.proc.send_signal(signal.SIGINT)
        svc.wait_for("SIGINT received")
        started = time.monotonic()
        svc.proc.send_signal(signal.SIGINT)
        assert svc.proc.wait(timeout=40) == 128 + signal.SIGINT
        assert time.monotonic() - started < 20
    finally:
        svc.stop()
