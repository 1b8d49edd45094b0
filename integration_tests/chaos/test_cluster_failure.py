"""Node failure on a three-member cluster (long profile only): a consumer process works
through a stream while a publisher keeps publishing, and the member leading the
topic's data is SIGKILLed, then started again on its data; twice.

Nothing acknowledged is lost: every confirmed publish is handled (before, during and
after each fault). Recovery: from the kill to the first event published after it
handled. Duplicates: handler runs to the end beyond the first. The clusters come
from :mod:`integration_tests.harness.clusters`, one at a time (a session fixture per
broker, torn down before the next one starts). On each cluster the crash-restart
scenario runs too (the consumer process SIGKILLed, the cluster untouched).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from eventbus import EventBus
from eventbus.testing import BrokerTarget
from integration_tests.chaos.report import Report, Result
from integration_tests.chaos.scenario import Trickle, duplicates, first_end_after, fleet, publish
from integration_tests.chaos.targets import ChaosTarget
from integration_tests.chaos.test_crash_restart import crash_restart
from integration_tests.harness.clusters import Cluster

EVENTS = 2000
FAULTS = 2

pytestmark = pytest.mark.cluster


@pytest.mark.timeout(900)
def test_cluster_node_failure(cluster: Cluster, report: Report, workdir: Path) -> None:
    result = asyncio.run(node_failure(cluster, workdir))
    report.add(result)
    assert result.lost == 0, result


@pytest.mark.timeout(900)
def test_cluster_crash_restart(cluster: Cluster, report: Report, workdir: Path) -> None:
    """The consumer process SIGKILLed three times (the cluster untouched): the same
    scenario as on a single node, through the multi-address URL."""
    options = {"delay": "0.002"}
    result = asyncio.run(crash_restart(on(cluster), workdir, "crash-restart", 1000, 3, options))
    report.add(result)
    assert result.lost == 0, result


def on(cluster: Cluster) -> ChaosTarget:
    """The chaos target of ``cluster`` (its URL names every member)."""
    name = f"{cluster.name}-cluster"
    return ChaosTarget(name, cluster.url, 5.0, BrokerTarget(name, cluster.url), 1.0)


async def node_failure(cluster: Cluster, workdir: Path) -> Result:
    target = on(cluster)
    name = target.name
    async with fleet(target, workdir, delay="0.005") as crew:
        await crew.spawn()
        async with EventBus.from_url(cluster.url) as publisher:
            confirmed = await publish(publisher, crew.topic, range(EVENTS))
            trickle = Trickle(publisher, crew.topic, first=EVENTS, publish_timeout=20.0)
            trickle.start()
            started = time.monotonic()
            recovery: list[float] = []
            killed: list[str] = []
            rejoin: list[float] = []
            for fault in range(FAULTS):
                await crew.more_handled(EVENTS // 5)
                pids = [c.pid for c in crew.consumers if c.running]
                index, what = await cluster.victim(crew.topic, crew.group, fault, pids)
                down = time.monotonic()
                await asyncio.to_thread(cluster.kill, index)
                killed.append(what)
                after = await trickle.wait_confirmed_after(down)
                recovery.append(await first_end_after(crew.journal, after, down, 180.0))
                back = time.monotonic()
                await asyncio.to_thread(cluster.revive, index)
                rejoin.append(round(time.monotonic() - back, 2))
            await asyncio.sleep(1.0)
            await trickle.stop()
        confirmed |= set(trickle.confirmed)
        ends = await crew.handled(confirmed)
        return Result(
            scenario="cluster-node-failure",
            broker=name,
            events=len(confirmed),
            faults="SIGKILL of a member (killed: which), then restarted on its data",
            fault_count=FAULTS,
            lost=len(confirmed - ends.keys()),
            duplicates=duplicates(ends, confirmed),
            recovery_s=recovery,
            seconds=round(time.monotonic() - started, 1),
            extra={
                "killed": killed,
                "restart_s": rejoin,
                "publishes_not_confirmed": trickle.failed,
            },
            notes="recovery_s: the kill to the first event published after it handled",
        )
