"""`eventbus run` operated on real brokers: ``--workers 3`` shares a group's work over three
processes, survives one worker's SIGKILL without losing a message and drains them all on
SIGTERM; ``/readyz`` turns unready while the connection to the broker is half-open and
ready again once it answers."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from eventbus import Event, EventBus
from integration_tests import harness
from tests.test_cli_ops import Run, free_port, until_answer

pytestmark = pytest.mark.timeout(180)

WORKER_SERVICE = """
    import asyncio, os
    from eventbus import Event, EventBus

    class Job(Event, type="ops-workers.job", topic=os.environ["OPS_TOPIC"]):
        n: int

    bus = EventBus.from_env(source="ops-workers", shutdown_timeout=20)

    def note(line: str) -> None:
        # One write with O_APPEND per line: the three workers' lines never interleave.
        fd = os.open(os.environ["OPS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\\n").encode())
        finally:
            os.close(fd)

    @bus.subscribe(Job, group=os.environ["OPS_GROUP"], concurrency=4)
    async def work(job: Job) -> None:
        note(f"start {job.n} {os.getpid()}")
        await asyncio.sleep(0.02)
        note(f"done {job.n} {os.getpid()}")
"""


class Job(Event, type="ops-workers.job", topic="ops-workers-unused"):
    n: int


def lines(log: Path, kind: str) -> list[tuple[int, int]]:
    """(job, pid) of each ``kind`` line of the workers' log."""
    if not log.exists():
        return []
    found = []
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == kind:
            found.append((int(parts[1]), int(parts[2])))
    return found


def wait_done(log: Path, jobs: range, timeout: float) -> list[tuple[int, int]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = lines(log, "done")
        if set(jobs) <= {n for n, _ in done}:
            return done
        time.sleep(0.1)
    missing = sorted(set(jobs) - {n for n, _ in lines(log, "done")})
    raise AssertionError(f"{len(missing)} job(s) never handled within {timeout}s: {missing[:20]}")


async def publish(url: str, topic: str, jobs: range) -> None:
    async with EventBus(url, source="ops-test") as bus:
        for start in range(jobs.start, jobs.stop, 50):
            batch = [Job(n=n) for n in range(start, min(start + 50, jobs.stop))]
            await bus.publish_many(batch, topic=topic)


def test_three_workers_share_the_group_and_survive_a_sigkill(tmp_path: Path) -> None:
    url = harness.require("rabbitmq").url
    topic, group = f"ops-{uuid.uuid4().hex[:8]}", f"g-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "jobs.log"
    (tmp_path / "workers_svc.py").write_text(textwrap.dedent(WORKER_SERVICE))
    health = free_port()
    run = Run(
        tmp_path,
        "workers_svc:bus",
        "--workers",
        "3",
        "--url",
        url,
        "--health-port",
        str(health),
        "--probe-host",
        "127.0.0.1",
        env={"OPS_TOPIC": topic, "OPS_GROUP": group, "OPS_LOG": str(log)},
    )
    try:
        ready = until_answer(health, "/readyz", timeout=60).json()
        pids = {w["pid"] for w in ready["workers"]}
        assert len(pids) == 3, ready

        asyncio.run(publish(url, topic, range(0, 300)))
        shared = Counter(pid for _, pid in wait_done(log, range(0, 300), 60))
        assert set(shared) == pids, f"not every worker got work: {shared}"

        # SIGKILL one worker in the middle of the next batch: nothing it held is lost.
        asyncio.run(publish(url, topic, range(300, 900)))
        deadline = time.monotonic() + 30
        while len(lines(log, "done")) < 450 and time.monotonic() < deadline:
            time.sleep(0.02)
        victim = sorted(pids)[0]
        os.kill(victim, signal.SIGKILL)
        run.wait_line(f"(pid {victim}) was killed by SIGKILL")
        done = wait_done(log, range(0, 900), 90)
        # What the victim had started and not finished was handled by another worker.
        cut = {n for n, pid in lines(log, "start") if pid == victim} - {
            n for n, pid in done if pid == victim
        }
        assert cut, "the victim held no job when killed: the kill proved nothing"
        assert all(any(n == m and pid != victim for m, pid in done) for n in cut), cut

        ready = until_answer(health, "/readyz", timeout=60).json()
        replaced = {w["pid"] for w in ready["workers"]}
        assert victim not in replaced and len(replaced) == 3, ready

        # SIGTERM drains every worker: each job a handler started is finished.
        asyncio.run(publish(url, topic, range(900, 1200)))
        deadline = time.monotonic() + 30
        while not any(n >= 900 for n, _ in lines(log, "start")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert run.stop(timeout=60) == 0, "\n".join(run.lines)
        started = {n for n, _ in lines(log, "start")}
        finished = {n for n, _ in lines(log, "done")}
        assert started <= finished, f"cut short: {sorted(started - finished)[:20]}"
        for pid in replaced:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        run.kill()


PROBED_SERVICE = """
    from eventbus import Event, EventBus

    class Tick(Event, type="ops-probes.tick", topic="ops-probes-ticks"):
        n: int

    bus = EventBus.from_env(source="ops-probes", stall_after=2.0)

    @bus.subscribe(Tick, group="ops-probes")
    async def on_tick(event: Tick) -> None:
        pass
"""


def test_readyz_turns_unready_while_the_connection_is_half_open(tmp_path: Path) -> None:
    """Redis Streams behind the fault proxy: ``freeze()`` stops forwarding without closing,
    /readyz turns 503 (while /livez stays 200: the loop runs); after ``thaw()`` it is ready
    again."""
    endpoint, proxy = harness.require_faulty("redis")
    url = urlunsplit(urlsplit(endpoint.url)._replace(scheme="redis+streams"))
    (tmp_path / "probed_svc.py").write_text(textwrap.dedent(PROBED_SERVICE))
    health = free_port()
    run = Run(
        tmp_path,
        "probed_svc:bus",
        "--url",
        url,
        "--health-port",
        str(health),
        "--probe-host",
        "127.0.0.1",
    )
    try:
        until_answer(health, "/readyz", timeout=60)
        proxy.freeze_sync()
        try:
            unready = until_answer(health, "/readyz", status=503, timeout=60).json()
            assert unready["ok"] is False and unready["detail"], unready
            assert httpx.get(f"http://127.0.0.1:{health}/livez", timeout=5).status_code == 200
        finally:
            proxy.thaw_sync()
        ready = until_answer(health, "/readyz", timeout=90).json()
        assert [s["state"] for s in ready["subscriptions"]] == ["running"]
        assert run.stop(timeout=60) == 0
    finally:
        run.kill()
