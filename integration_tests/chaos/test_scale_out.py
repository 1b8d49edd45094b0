"""Scale-out: three consumer processes in one group share the work; one is SIGKILLed.

The three share the stream; the two left take the killed one's share (the events it
had started and not finished, and what it had fetched) within the broker's lease
bound (Kafka's session timeout, a JetStream ``ack_wait``, the Streams claim time, the
SQS visibility timeout, the SQL lease; RabbitMQ requeues at once when the dead
process's connection closes); nothing is lost; on Kafka, which hands whole
partitions over from the last commit, each key's events are first handled in order
across the hand-over. Elsewhere the order inversions are counted and reported.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from eventbus import EventBus
from integration_tests.chaos.fleet import Line
from integration_tests.chaos.report import Report, Result
from integration_tests.chaos.scenario import duplicates, fleet, publish
from integration_tests.chaos.targets import ORDER_ACROSS_HANDOVER, ChaosTarget

MEMBERS = 3
# More keys than the group holds in flight (3 members x prefetch 8): the SQL brokers
# hand out one message per key at a time across the group (per-key order), so with
# fewer keys two members can hold every key's head and leave the third idle.
KEYS = 48
SLACK = 10.0  # seconds on top of the lease: a rebalance, a restart of polling, load


@pytest.mark.timeout(900)
def test_scale_out_and_kill_one(
    target: ChaosTarget, long: bool, report: Report, workdir: Path
) -> None:
    count = target.count(600)

    async def scenario() -> Result:
        async with fleet(target, workdir, delay="0.01") as crew:
            members = [await crew.spawn() for _ in range(MEMBERS)]
            async with EventBus.from_url(target.url) as publisher:
                confirmed = await publish(publisher, crew.topic, range(count), keys=KEYS)
            journal = crew.journal
            started = time.monotonic()
            while len(journal.ends()) < count // 3:
                assert time.monotonic() - started < 300, f"stream not handled\n{crew.logs()}"
                await asyncio.sleep(0.02)
            pids = {m.pid for m in members}
            shares = {
                pid: sum(1 for line in journal.lines() if line.pid == pid and line.mark == "E")
                for pid in pids
            }
            victim = max(members, key=lambda m: shares[m.pid])
            await victim.kill()
            await victim.wait(10.0)
            killed = time.monotonic()
            lines = journal.lines()
            mine = [line for line in lines if line.pid == victim.pid]
            done = {line.seq for line in mine if line.mark == "E"}
            orphans = {line.seq for line in mine if line.mark == "S"} - done
            await journal.wait_handled(confirmed, timeout=300.0, progress=90.0)
            lines = journal.lines()
            takeover = 0.0
            for seq in orphans:
                by_others = [
                    line.at
                    for line in lines
                    if line.seq == seq and line.mark == "E" and line.pid != victim.pid
                ]
                takeover = max(takeover, min(by_others) - killed)
            ends = journal.ends()
            return Result(
                scenario="scale-out",
                broker=target.name,
                events=count,
                faults=f"SIGKILL of 1 of {MEMBERS} consumers",
                fault_count=1,
                lost=len(confirmed - ends.keys()),
                duplicates=duplicates(ends, confirmed),
                recovery_s=[round(takeover, 2)],
                seconds=round(time.monotonic() - started, 1),
                extra={
                    "shares_before_kill": sorted(shares.values()),
                    "orphans": len(orphans),
                    "lease_s": target.lease,
                    "order_inversions": _inversions(lines),
                },
                notes="recovery_s: kill to the last of its unfinished events handled by "
                "another member",
            )

    result = asyncio.run(scenario())
    report.add(result)
    assert result.lost == 0
    assert all(share > 0 for share in result.extra["shares_before_kill"]), (
        f"the work was not shared: {result.extra['shares_before_kill']}"
    )
    assert result.recovery_s[0] <= target.lease + SLACK, (
        f"the killed member's work was taken over after {result.recovery_s[0]}s, over the "
        f"{target.lease}s lease (+{SLACK}s)"
    )
    if target.name in ORDER_ACROSS_HANDOVER:
        assert result.extra["order_inversions"] == 0


def _inversions(lines: list[Line]) -> int:
    """Events first handled before an earlier event of the same key (ends, by time)."""
    first: dict[int, float] = {}
    for line in lines:
        if line.mark == "E" and line.seq not in first:
            first[line.seq] = line.at
    inversions = 0
    for key in range(KEYS):
        seqs = sorted(s for s in first if s % KEYS == key)
        latest = -1.0
        for seq in seqs:
            if first[seq] < latest:
                inversions += 1
            latest = max(latest, first[seq])
    return inversions
