"""Connection cuts and freezes through the fault proxy, repeatedly, under load.

A consumer process and a publisher both reach the broker through the fault proxy; in
turn every connection is cut (``drop_connections``) and the path frozen without a
close (``freeze``: a half-open connection) while events keep flowing. Every confirmed
publish is handled; the time from each fault's end to the next handled event is its
recovery time.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from eventbus import EventBus
from eventbus.testing.target import FaultInjector
from integration_tests.chaos.report import Report, Result
from integration_tests.chaos.scenario import Trickle, duplicates, first_end_after, fleet
from integration_tests.chaos.targets import ChaosTarget

FREEZE_S = 2.0
REFUSE_S = 1.0
PAUSE_S = 1.0  # events flowing between two faults


@pytest.mark.timeout(1200)
def test_cuts_and_freezes_under_load(
    target: ChaosTarget, long: bool, report: Report, workdir: Path
) -> None:
    faults = target.base.faults
    assert faults is not None, f"{target.name} has no fault injector"
    cycles = 10 if long else 1

    async def scenario() -> Result:
        async with fleet(target, workdir, delay="0.002") as crew:
            await crew.spawn()
            journal = crew.journal
            async with EventBus.from_url(target.url) as publisher:
                trickle = Trickle(publisher, crew.topic, first=0, every=0.01)
                trickle.start()
                started = time.monotonic()
                await first_end_after(journal, None, started, 60.0)
                recovery: list[float] = []
                for _ in range(cycles):
                    await _cut(faults)
                    recovery.append(await first_end_after(journal, None, time.monotonic(), 180.0))
                    await asyncio.sleep(PAUSE_S)
                    await faults.freeze(FREEZE_S)
                    await asyncio.sleep(FREEZE_S)
                    recovery.append(await first_end_after(journal, None, time.monotonic(), 180.0))
                    await asyncio.sleep(PAUSE_S)
                await trickle.stop()
            confirmed = set(trickle.confirmed)
            ends = await crew.handled(confirmed)
            return Result(
                scenario="cuts-and-freezes",
                broker=target.name,
                events=len(confirmed),
                faults=f"connections cut, then frozen {FREEZE_S:g}s, alternately"
                + (" (SQLite: write lock held 1s, then frozen)" if target.name == "sqlite" else ""),
                fault_count=2 * cycles,
                lost=len(confirmed - ends.keys()),
                duplicates=duplicates(ends, confirmed),
                recovery_s=recovery,
                seconds=round(time.monotonic() - started, 1),
                extra={"publishes_not_confirmed": trickle.failed},
                notes="recovery_s: each fault's end to the next event handled",
            )

    result = asyncio.run(scenario())
    report.add(result)
    assert result.lost == 0


async def _cut(faults: FaultInjector) -> None:
    """Cut every connection; SQLite has none (each process opens the file), so there the
    cut is its refusal: the write lock held by another connection for a second."""
    try:
        await faults.drop_connections()
    except NotImplementedError:
        await faults.refuse_connections(REFUSE_S)
