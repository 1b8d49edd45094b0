"""The duplicate rate after a crash: handlers that do nothing (as fast as the broker
goes), the consumer process SIGKILLed mid-stream: what each kill re-runs.

The other brokers settle each message on its own (0-10 per kill). Kafka keeps one
committed offset per partition, so a kill re-runs what was settled since the last
finished commit: the handling rate times the commit latency. The adapter pipelines
its commits (one in flight, the next started at once, the event loop yielded so a
response is read within a few records: docs/adapters/kafka.md, "Commits"), which
leaves the round trip itself, mostly the broker's: Kafka 4.x's group coordinator
holds each commit for ``group.coordinator.append.linger.ms`` (5 ms by default), and a
fetched batch runs at about 30,000 records/s here, so at full speed a kill re-runs
about 150 or more, not the 5% (50) #25 asked for. So the defaults are bounded at 30%:
before the pipelining they re-ran 326-531 of 1,000 in most runs (a commit could not
start, nor its response be read, until a fetched batch ended); pipelined, 104-244.
``max_uncommitted`` bounds what a crash re-runs and pays for it in throughput: it must
stay within 5% of the events (#25: 3,000 events over 3 kills; here 1,000 and 1 kill,
the same share). The long profile measures every broker with 3,000 events and 3 kills.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from integration_tests.chaos.report import Report
from integration_tests.chaos.targets import ChaosTarget
from integration_tests.chaos.test_crash_restart import crash_restart

# Per broker: (label, URL options, at most this share of the events re-run or None).
CADENCES: dict[str, list[tuple[str, str, float | None]]] = {
    "kafka": [
        ("defaults", "", 0.3),
        ("max_uncommitted=40", "commit_every=20&max_uncommitted=40", 0.05),
    ]
}


def applies(name: str, long: bool) -> bool:
    return long or name in CADENCES


@pytest.mark.timeout(900)
def test_duplicate_rate_after_a_crash(
    target: ChaosTarget, long: bool, report: Report, workdir: Path
) -> None:
    # The same count on every broker (the figure is per kill), but a quarter on moto.
    count = (3000 if long else 1000) // (4 if target.name == "sqs" else 1)
    kills = 3 if long else 1
    failures = []
    for label, options, bound in CADENCES.get(target.name, [("defaults", "", None)]):
        chosen = target.with_options(options) if options else target
        (workdir / label).mkdir()
        result = asyncio.run(
            crash_restart(chosen, workdir / label, "duplicate-rate", count, kills, {"delay": "0"})
        )
        result.extra["cadence"] = label
        report.add(result)
        assert result.lost == 0
        if bound is not None and result.duplicates > bound * count:
            failures.append(
                f"{label}: {result.duplicates} of {count} events re-run after "
                f"{kills} kill(s), over {bound:.0%}"
            )
    assert not failures, failures
