"""Graceful shutdown under load: SIGTERM to ``eventbus run`` during a burst.

The handlers running at the signal finish; no handler starts after it (work fetched
but not started goes back to the broker: #25 found lanes starting the whole prefetch
after SIGTERM, the last runs cut off at the timeout); the process exits 0 within the
shutdown timeout; a consumer started afterwards handles the rest: nothing is lost.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from eventbus import EventBus
from integration_tests.chaos.report import Report, Result
from integration_tests.chaos.scenario import duplicates, fleet, publish
from integration_tests.chaos.targets import ChaosTarget

SHUTDOWN_TIMEOUT = 10.0
HANDLER_S = 0.05
CONCURRENCY = 4
SIGNAL_GRACE = 0.02  # seconds from kill(2) to the process's loop running its handler


@pytest.mark.timeout(600)
def test_sigterm_during_a_burst(
    target: ChaosTarget, long: bool, report: Report, workdir: Path
) -> None:
    count = target.count(400)
    signals = 3 if long else 1

    async def scenario() -> Result:
        options = {
            "delay": f"{HANDLER_S:g}",
            "concurrency": str(CONCURRENCY),
            "shutdown": f"{SHUTDOWN_TIMEOUT:g}",
        }
        async with fleet(target, workdir, **options) as crew:
            # Subscribed before the burst: RabbitMQ refuses what no group would store.
            consumer = await crew.spawn()
            async with EventBus.from_url(target.url) as publisher:
                confirmed = await publish(publisher, crew.topic, range(count))
            journal = crew.journal
            exits: list[float] = []
            late: list[int] = []
            cut: list[int] = []
            started = time.monotonic()
            for round_ in range(signals):
                if round_:
                    consumer = await crew.spawn()
                goal = len(journal.ends()) + max(8, count // (signals + 2))
                while len(journal.ends()) < min(goal, count - CONCURRENCY * 2):
                    await asyncio.sleep(0.01)
                    assert time.monotonic() - started < 300, "the burst is not being handled"
                # A start counts as late when its journal time (the same monotonic clock
                # in every process) is past the signal plus the moment its loop takes
                # to run the handler (a snapshot of the journal taken before the
                # signal would count starts made between the two as late).
                signalled = time.monotonic()
                await consumer.terminate()
                code = await consumer.wait(SHUTDOWN_TIMEOUT + 15.0)
                exits.append(round(time.monotonic() - signalled, 2))
                assert code == 0, f"exit {code} after SIGTERM (round {round_})\n{crew.logs()}"
                mine = [line for line in journal.lines() if line.pid == consumer.pid]
                late += [
                    line.seq
                    for line in mine
                    if line.mark == "S" and line.at > signalled + SIGNAL_GRACE
                ]
                ended = {line.seq for line in mine if line.mark == "E"}
                cut += [line.seq for line in mine if line.mark == "S" and line.seq not in ended]
            await crew.spawn()
            await journal.wait_handled(confirmed, timeout=300.0, progress=90.0)
            ends = journal.ends()
            return Result(
                scenario="graceful-shutdown",
                broker=target.name,
                events=count,
                faults="SIGTERM during a burst (concurrency 4)",
                fault_count=signals,
                lost=len(confirmed - ends.keys()),
                duplicates=duplicates(ends, confirmed),
                recovery_s=exits,
                seconds=round(time.monotonic() - started, 1),
                extra={"started_after_signal": len(late), "cut_off": len(cut)},
                notes="recovery_s: seconds from SIGTERM to exit 0",
            )

    result = asyncio.run(scenario())
    report.add(result)
    assert result.extra["started_after_signal"] == 0, (
        f"{result.extra['started_after_signal']} handler run(s) started after SIGTERM"
    )
    assert result.extra["cut_off"] == 0, f"{result.extra['cut_off']} handler run(s) cut off"
    assert max(result.recovery_s) <= SHUTDOWN_TIMEOUT + 5.0
    assert result.lost == 0
