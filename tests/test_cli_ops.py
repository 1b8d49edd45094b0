"""`eventbus run --health-port/--metrics-port/--workers/--reload` as a process: the probes
answer, /metrics serves, SIGTERM exits 0; a worker that dies is restarted and logged; a
code change restarts the workers; what cannot work is refused in one line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

SERVICE = """
    from eventbus import EventBus, Event

    class Pinged(Event, type="ops-test.pinged", topic="ops-test-pings"):
        n: int

    bus = EventBus.from_env(source="ops-test")

    @bus.subscribe(Pinged, group="ops-test")
    async def on_ping(event: Pinged) -> None:
        pass
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Run:
    """`python -m eventbus run` in its own process; stderr collected line by line."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None) -> None:
        environ = {k: v for k, v in os.environ.items() if k != "EVENTBUS_URL"}
        environ["PYTHONPATH"] = os.pathsep.join([str(cwd), environ.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eventbus", "run", *args],
            cwd=cwd,
            env={**environ, **(env or {})},
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, needle: str, timeout: float = 20.0, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[after:]:
                if needle in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no line with {needle!r} in {timeout}s:\n" + "\n".join(self.lines))

    def stop(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._pump.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []
    module = f"ops_svc_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(SERVICE))

    def launch(*args: str, **kwargs: Any) -> Run:
        run = Run(tmp_path, f"{module}:bus", *args, **kwargs)
        run.module = tmp_path / f"{module}.py"  # type: ignore[attr-defined]
        runs.append(run)
        return run

    yield launch
    for run in runs:
        run.kill()


def until_answer(port: int, path: str, status: int = 200, timeout: float = 20.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5.0)
        except httpx.HTTPError as exc:
            last = exc
        else:
            if answer.status_code == status:
                return answer
            last = f"{answer.status_code} {answer.text}"
        time.sleep(0.1)
    raise AssertionError(f"{path} on {port} never answered {status} in {timeout}s: {last}")


def test_run_serves_the_probes_and_the_metrics_and_stops_on_sigterm(
    start: Callable[..., Run],
) -> None:
    health, metrics = free_port(), free_port()
    run = start(
        "--health-port", str(health), "--metrics-port", str(metrics), "--probe-host", "127.0.0.1"
    )
    assert until_answer(health, "/livez").text == "ok\n"
    ready = until_answer(health, "/readyz").json()
    assert [s["state"] for s in ready["subscriptions"]] == ["running"]
    scraped = until_answer(metrics, "/metrics")
    assert "python_info" in scraped.text  # prometheus-client's default collectors
    assert run.stop() == 0


def test_metrics_port_without_prometheus_client_names_the_extra(
    start: Callable[..., Run], tmp_path: Path
) -> None:
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['prometheus_client'] = None\n")
    run = start(
        "--metrics-port",
        str(free_port()),
        env={"PYTHONPATH": os.pathsep.join([str(hide), str(tmp_path)])},
    )
    assert run.proc.wait(30) == 3
    run._pump.join(5)
    assert any('pip install "eventbus[prometheus]"' in line for line in run.lines), run.lines


def test_workers_refuse_the_in_memory_broker(start: Callable[..., Run]) -> None:
    run = start("--workers", "2")
    assert run.proc.wait(30) == 2
    run._pump.join(5)
    assert any("--workers 2 cannot share memory://" in line for line in run.lines), run.lines


def _worker_pids(port: int) -> list[int]:
    body = until_answer(port, "/readyz").json()
    return [w["pid"] for w in body["workers"]]


def test_a_dead_worker_is_restarted_and_logged(start: Callable[..., Run]) -> None:
    """One worker under the supervisor (--reload allows it on memory://): SIGKILL it, the
    supervisor logs why and starts another; /readyz is ready again with the new pid."""
    health = free_port()
    run = start("--reload", "--health-port", str(health), "--probe-host", "127.0.0.1")
    (pid,) = _worker_pids(health)
    os.kill(pid, signal.SIGKILL)
    line = run.wait_line(f"(pid {pid}) was killed by SIGKILL")
    assert "worker 1" in line and "restarting it in" in line
    deadline = time.monotonic() + 20
    while (pids := _worker_pids(health)) == [pid] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids != [pid]
    assert run.stop() == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # drained and gone with the supervisor


def test_a_code_change_reloads_the_workers(start: Callable[..., Run]) -> None:
    health = free_port()
    run = start("--reload", "--health-port", str(health), "--probe-host", "127.0.0.1")
    (pid,) = _worker_pids(health)
    module: Path = run.module  # type: ignore[attr-defined]
    module.write_text(module.read_text() + "\n# changed\n")
    run.wait_line("reloading:")
    deadline = time.monotonic() + 20
    while (pids := _worker_pids(health)) == [pid] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids != [pid]
    assert not any("killed" in line or "restarting it" in line for line in run.lines), run.lines
    assert run.stop() == 0


def test_worker_log_lines_say_which_worker(start: Callable[..., Run]) -> None:
    run = start("--reload")
    run.wait_line("worker-1 eventbus")
    assert run.stop() == 0


def test_a_broken_change_is_logged_and_its_fix_reloads(start: Callable[..., Run]) -> None:
    health = free_port()
    run = start("--reload", "--health-port", str(health), "--probe-host", "127.0.0.1")
    (pid,) = _worker_pids(health)
    module: Path = run.module  # type: ignore[attr-defined]
    good = module.read_text()
    module.write_text(good + "\nthis is not python\n")
    run.wait_line("exited 5")  # the worker's import failed: logged, and retried
    module.write_text(good + "\n# fixed\n")
    deadline = time.monotonic() + 30
    while (pids := _worker_pids(health)) == [pid] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids != [pid]
    assert run.stop() == 0
