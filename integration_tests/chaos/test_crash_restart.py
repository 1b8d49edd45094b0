"""Crash-restart: the consumer process (``eventbus run``) SIGKILLed at random K times
mid-stream and started again, as a supervisor would.

Every confirmed event is handled at least once (the loss assertion); the runs beyond
the first are counted, per kill: the duplicate rate after a crash of each broker.
With the idempotency middleware on a shared store (Redis) the effects are counted
the same way: a kill between a handler's effect and the store's "done" mark is the
one window where an effect can repeat, so at most one effect per kill per handler
running at the kill may repeat; the scenario asserts that bound and reports the
figure.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from eventbus import EventBus
from integration_tests import harness
from integration_tests.chaos.report import Report, Result
from integration_tests.chaos.scenario import duplicates, fleet, publish
from integration_tests.chaos.targets import ChaosTarget


def shared_redis() -> str:
    """The idempotency store every process of a scenario shares: the session's Redis
    (not the target's, which a broker scenario may restart)."""
    return harness.require("redis").url


def kills_for(target: ChaosTarget, long: bool) -> int:
    # Each Kafka restart waits for a rebalance: fewer kills in the short profile.
    if long:
        return 5
    return 1 if target.name in ("kafka", "sqs") else 2


@pytest.mark.timeout(900)
@pytest.mark.parametrize("idempotent", [False, True], ids=["plain", "idempotent"])
def test_crash_restart(
    target: ChaosTarget, idempotent: bool, long: bool, report: Report, workdir: Path
) -> None:
    count = target.count(300)
    # With idempotency the figure is the window per kill: one kill says it in the short
    # profile (and keeps it within its time budget).
    kills = kills_for(target, long) if long or not idempotent else 1
    options = {"delay": "0.002"}
    if idempotent:
        options |= {"idempotency": shared_redis(), "lease": f"{max(3.0, target.lease):g}"}
    name = "crash-restart+idempotency" if idempotent else "crash-restart"
    result = asyncio.run(crash_restart(target, workdir, name, count, kills, options))
    report.add(result)
    assert result.lost == 0
    if idempotent:
        # Each kill can repeat at most the effect of the one handler that was between
        # its effect and the store's done mark (concurrency 1): the window the
        # idempotency middleware declares (docs/reliability.md).
        assert result.duplicates <= kills, (
            f"{result.duplicates} effects repeated over {kills} kill(s) with the "
            "idempotency middleware on Redis"
        )


async def crash_restart(
    target: ChaosTarget, workdir: Path, name: str, count: int, kills: int, options: dict[str, str]
) -> Result:
    """Publish ``count`` events, SIGKILL the consumer ``kills`` times at random points of
    the stream (restarting it each time), wait until every event was handled."""
    async with fleet(target, workdir, **options) as crew:
        consumer = await crew.spawn()
        async with EventBus.from_url(target.url) as publisher:
            confirmed = await publish(publisher, crew.topic, range(count))
        journal = crew.journal
        recovery: list[float] = []
        started = time.monotonic()
        for k in range(kills):
            # Kill at a random point of the stream (while events are being handled).
            goal = int(count * (k + crew.rng.uniform(0.3, 0.9)) / (kills + 1))
            await _handled_at_least(journal.ends, goal, 120.0)
            await consumer.kill()
            await consumer.wait(10.0)
            killed = time.monotonic()
            before = len(journal.lines())
            await consumer.start()
            await _progress_after(journal, before, 120.0)
            recovery.append(round(time.monotonic() - killed, 2))
        try:
            await journal.wait_handled(confirmed, timeout=300.0, progress=90.0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{crew.logs()}") from exc
        ends = journal.ends()
        dup = duplicates(ends, confirmed)
        idempotent = "idempotency" in options
        return Result(
            scenario=name,
            broker=target.name,
            events=count,
            faults="SIGKILL of the consumer process",
            fault_count=kills,
            lost=len(confirmed - ends.keys()),
            duplicates=dup,
            recovery_s=recovery,
            seconds=round(time.monotonic() - started, 1),
            extra={
                "duplicates_per_kill": round(dup / kills, 1),
                "runs_started": sum(journal.starts().values()),
            },
            notes=(
                "effects (handler ends) with the idempotency middleware on Redis"
                if idempotent
                else "handler runs to the end"
            )
            + "; recovery_s: kill to the restarted process's first event handled",
        )


async def _handled_at_least(ends: object, goal: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(ends()) < goal:  # type: ignore[operator]
        assert time.monotonic() < deadline, f"fewer than {goal} events handled in {timeout}s"
        await asyncio.sleep(0.01)


async def _progress_after(journal: object, lines: int, timeout: float) -> None:
    """The restarted consumer handled something new (its recovery)."""
    deadline = time.monotonic() + timeout
    while True:
        new = journal.lines()[lines:]  # type: ignore[attr-defined]
        if any(line.mark == "E" for line in new):
            return
        assert time.monotonic() < deadline, f"no event handled {timeout}s after the restart"
        await asyncio.sleep(0.02)
