"""The README's workflow on ``sqlite://`` with real processes: ``eventbus run`` consumes,
``eventbus publish`` publishes from other processes, the consumer is killed with SIGKILL
mid-stream and started again, every event is handled (at least once) and
``eventbus dlq list`` shows the poison one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

APP = textwrap.dedent('''
    """A worker whose handler records each job durably, slowly enough to be killed mid-stream."""
    import asyncio
    import os

    from eventbus import Event, EventBus

    class Job(Event, type="cliflow.job", topic="jobs"):
        n: int

    bus = EventBus.from_env(source="cliflow-worker")

    @bus.subscribe(Job, group="workers", start_from="earliest")
    async def handle(job: Job) -> None:
        await asyncio.sleep(0.15)
        fd = os.open(os.environ["HANDLED_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, f"{job.n}\\n".encode())
        os.fsync(fd)
        os.close(fd)
''')
JOBS = 12
POISON = '{"n": "not a number"}'


def _handled(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def _wait(condition: object, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def test_run_publish_sigkill_restart_and_dlq_list(tmp_path: Path) -> None:
    (tmp_path / "cliflow_app.py").write_text(APP)
    log = tmp_path / "handled.log"
    url = f"sqlite:///{tmp_path / 'app.db'}?lease=2"
    env = {
        **os.environ,
        "EVENTBUS_URL": url,
        "HANDLED_LOG": str(log),
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    eventbus = [sys.executable, "-m", "eventbus"]

    def start_worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*eventbus, "run", "cliflow_app:bus"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def publish(data: str) -> str:
        done = subprocess.run(
            [*eventbus, "publish", "jobs", "--type", "cliflow.job", "--data", data],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode().strip()

    worker = start_worker()
    try:
        for n in range(JOBS // 2):
            publish(json.dumps({"n": n}))
        poison_id = publish(POISON)
        for n in range(JOBS // 2, JOBS):
            publish(json.dumps({"n": n}))
        _wait(lambda: len(_handled(log)) >= 3, "the worker to handle a few jobs", 60)
        assert len(set(_handled(log))) < JOBS, "the worker finished before it could be killed"
        worker.send_signal(signal.SIGKILL)  # mid-stream: no ack, no cleanup
        assert worker.wait(10) == -signal.SIGKILL
        worker = start_worker()
        _wait(lambda: set(_handled(log)) >= set(range(JOBS)), "every job after the restart", 90)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.stderr.read().decode() if worker.stderr else ""
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    listed = subprocess.run(
        [*eventbus, "dlq", "list", "jobs", "workers", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr.decode()
    letters = [json.loads(line) for line in listed.stdout.decode().splitlines() if line]
    assert [letter["id"] for letter in letters] == [poison_id], letters
    assert "SchemaError" in letters[0]["reason"], letters[0]["reason"]


@pytest.mark.parametrize(
    "command", [["publish", "jobs", "--type", "t"], ["dlq", "list", "jobs", "workers"]]
)
def test_cli_names_a_missing_directory(tmp_path: Path, command: list[str]) -> None:
    """A sqlite:// URL whose directory does not exist fails with one line naming it."""
    url = f"sqlite:///{tmp_path / 'nowhere' / 'app.db'}"
    done = subprocess.run(
        [sys.executable, "-m", "eventbus", *command, "--url", url], capture_output=True, timeout=60
    )
    assert done.returncode != 0
    assert "nowhere" in done.stderr.decode(), done.stderr.decode()
