"""The --workers supervisor in this process (its workers are real `eventbus run`
processes): /readyz covers every worker, a killed worker is replaced and logged, stop()
drains them; how a worker ended reads plainly."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import textwrap
from pathlib import Path

import httpx
import pytest

from eventbus.cli.workers import Supervisor, WorkerPlan, describe_exit
from tests.bus_support import Records

SERVICE = """
    from eventbus import EventBus
    bus = EventBus.from_env(source="sup-test")

    @bus.subscribe("sup-test-topic", group="sup-test")
    async def handle(envelope) -> None:
        pass
"""


async def ready_workers(port: int, timeout: float = 30.0) -> list[dict]:
    async def poll() -> list[dict]:
        async with httpx.AsyncClient(timeout=5.0) as http:
            while True:
                answer = await http.get(f"http://127.0.0.1:{port}/readyz")
                if answer.status_code == 200:
                    return answer.json()["workers"]  # type: ignore[no-any-return]
                await asyncio.sleep(0.1)

    return await asyncio.wait_for(poll(), timeout)


def test_supervisor_replaces_a_killed_worker_and_drains_on_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sup_svc.py").write_text(textwrap.dedent(SERVICE))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    )
    monkeypatch.delenv("EVENTBUS_URL", raising=False)
    records = Records("eventbus.cli")
    records.logger.addHandler(records)
    records.logger.setLevel(logging.INFO)

    async def scenario() -> int:
        supervisor = Supervisor(
            WorkerPlan("sup_svc:bus", 2, "info", health_port=0, host="127.0.0.1")
        )
        running = asyncio.create_task(supervisor.run())
        while supervisor.probes is None:  # noqa: ASYNC110 - run() sets it, signalling nothing
            await asyncio.sleep(0.01)
        port = supervisor.probes.health_port
        assert port is not None
        workers = await ready_workers(port)
        assert [w["index"] for w in workers] == [1, 2]
        assert all(w["subscriptions"][0]["state"] == "running" for w in workers)
        victim = workers[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        while True:
            workers = await ready_workers(port)
            if victim not in {w["pid"] for w in workers}:
                break
            await asyncio.sleep(0.1)
        supervisor.stop()
        code = await asyncio.wait_for(running, 30)
        for worker in workers:
            with pytest.raises(ProcessLookupError):
                os.kill(worker["pid"], 0)
        return code

    try:
        assert asyncio.run(scenario()) == 0
    finally:
        records.logger.removeHandler(records)
    messages = [r.getMessage() for r in records.records]
    assert any("worker 2 (pid" in m and "was killed by SIGKILL" in m for m in messages), messages
    assert any("every worker stopped" in m for m in messages), messages


def test_how_a_worker_ended_reads_plainly() -> None:
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(-200) == "was killed by signal 200"
    assert describe_exit(1) == "exited 1 (a subscription died for good)"
    assert describe_exit(3) == "exited 3"
    assert describe_exit(None) == "is gone"
