"""Broker restart mid-stream: a consumer process works through a stream while a
publisher keeps publishing; the broker is stopped and started again on its data.

Nothing the broker confirmed is lost: every confirmed publish is handled (before,
during and after the restart); the time from the broker being back to the first event
published after it being handled is the recovery time.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from pathlib import Path

import pytest

from eventbus import EventBus
from integration_tests.chaos.report import Report, Result
from integration_tests.chaos.scenario import Trickle, duplicates, first_end_after, fleet, publish
from integration_tests.chaos.targets import ChaosTarget

# A broker the scenario cannot restart on its data, and why (docs/reliability.md).
NOT_RESTARTABLE = {
    "sqs": "moto_server keeps queues and messages in memory only, so a restart forgets "
    "them (SQS stores messages durably; the conformance restart case is a declared "
    "moto limit too)",
    "sqlite": "SQLite has no server process to restart: the log is the file, and a commit "
    "is on disk when it returns (the crash scenarios kill its only processes)",
}


def applies(name: str, long: bool) -> bool:
    return name not in NOT_RESTARTABLE


@pytest.mark.timeout(900)
def test_broker_restart_mid_stream(
    target: ChaosTarget, long: bool, report: Report, workdir: Path
) -> None:
    restart = target.base.restart
    assert restart is not None, (
        f"{target.name}: the harness could not start a private broker to restart "
        "(the shared one is never restarted)"
    )
    count = target.count(300)
    restarts = 3 if long else 1

    async def do_restart() -> None:
        assert restart is not None
        if inspect.iscoroutinefunction(restart):
            await restart()
        else:
            await asyncio.to_thread(restart)

    async def scenario() -> Result:
        async with fleet(target, workdir, delay="0.005") as crew:
            await crew.spawn()
            journal = crew.journal
            async with EventBus.from_url(target.url) as publisher:
                confirmed = await publish(publisher, crew.topic, range(count))
                trickle = Trickle(publisher, crew.topic, first=count)
                trickle.start()
                started = time.monotonic()
                recovery, downtime = [], []
                for _ in range(restarts):
                    await crew.more_handled(20)
                    down = time.monotonic()
                    await do_restart()
                    back = time.monotonic()
                    downtime.append(round(back - down, 2))
                    await asyncio.sleep(0.5)  # publishes confirmed after the restart
                    after = await trickle.wait_confirmed_after(back)
                    recovery.append(await first_end_after(journal, after, back, 180.0))
                await asyncio.sleep(1.0)
                await trickle.stop()
            confirmed |= set(trickle.confirmed)
            ends = await crew.handled(confirmed)
            return Result(
                scenario="broker-restart",
                broker=target.name,
                events=len(confirmed),
                faults="broker stopped and started on its data",
                fault_count=restarts,
                lost=len(confirmed - ends.keys()),
                duplicates=duplicates(ends, confirmed),
                recovery_s=recovery,
                seconds=round(time.monotonic() - started, 1),
                extra={"restart_s": downtime, "publishes_not_confirmed": trickle.failed},
                notes="recovery_s: broker back to the first event published after it "
                "handled"
                + (
                    "; PostgreSQL's hook ends every session and refuses "
                    "connections (the server is shared)"
                    if target.name == "postgres"
                    else ""
                ),
            )

    result = asyncio.run(scenario())
    report.add(result)
    assert result.lost == 0
