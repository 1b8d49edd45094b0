"""What an acknowledged Redis write can lose on a Sentinel failover (long profile only).

Redis replicates asynchronously: the primary acknowledges a write before its replica
has it, so a primary SIGKILLed mid-stream can take acknowledged writes with it when
the Sentinels promote the replica. Measured here on the Sentinel cluster with plain
redis-py (the adapter's ``XADD`` is the same command): batches of 100 ``XADD`` s
pipelined as fast as they go, the primary SIGKILLed mid-stream, then counted on the
promoted replica; three failovers each:

- ``plain``: a write counts as acknowledged when its ``XADD`` answered (what the
  adapter's publish confirms): losses are measured and declared, not asserted;
- ``wait``: a batch counts only once ``WAIT 1 1000`` said the replica has it:
  asserted to lose nothing (with one replica, the one the Sentinels promote).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import cast

import pytest
import redis

from eventbus import EventBus
from eventbus.errors import BrokerConnectionError
from integration_tests.chaos.app import on_topic
from integration_tests.chaos.report import Report, Result
from integration_tests.harness.clusters import RedisSentinelCluster

pytestmark = pytest.mark.cluster

ROUNDS = 3
KILL_AFTER = 3000  # acknowledged writes before the kill
BATCH = 100


class Writer(threading.Thread):
    """Pipelines batches of ``XADD`` to ``url`` until a call fails; ``acked``: the
    numbers of the writes it counts as acknowledged."""

    def __init__(self, url: str, key: str, wait: bool) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(url, socket_timeout=5)
        self.key, self.wait = key, wait
        self.acked: set[int] = set()
        self.unconfirmed = 0

    def run(self) -> None:
        first = 0
        try:
            while True:
                numbers = range(first, first + BATCH)
                pipe = self.client.pipeline(transaction=False)
                for n in numbers:
                    pipe.xadd(self.key, {"n": n})
                pipe.execute()
                if not self.wait or self.client.wait(1, 1000) >= 1:
                    self.acked.update(numbers)
                else:
                    self.unconfirmed += BATCH
                first += BATCH
        except (redis.RedisError, OSError):
            return  # the primary is gone
        finally:
            self.client.close()


def one_failover(cluster: RedisSentinelCluster, wait: bool) -> tuple[int, int, float]:
    """(acknowledged, lost, seconds to the new primary) of one kill of the primary."""
    primary = cluster.primary()
    key = f"window-{uuid.uuid4().hex[:8]}"
    writer = Writer(cluster.members[primary].url, key, wait)
    writer.start()
    deadline = time.monotonic() + 60
    while len(writer.acked) < KILL_AFTER:
        assert time.monotonic() < deadline and writer.is_alive(), "the writer stalled"
        time.sleep(0.001)
    killed = time.monotonic()
    cluster.kill(primary)
    writer.join(30)
    acked = set(writer.acked)  # what was acknowledged before the connection broke
    while (promoted := _primary_or_none(cluster)) in (None, primary):
        assert time.monotonic() - killed < 60, "the Sentinels promoted no replica in 60 s"
        time.sleep(0.1)
    switched = time.monotonic() - killed
    client = redis.Redis.from_url(cluster.members[promoted].url, socket_timeout=5)
    try:
        entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", client.xrange(key))
        present = {int(fields[b"n"]) for _, fields in entries}
    finally:
        client.close()
    cluster.revive(primary)  # back as the new primary's replica, synced
    return len(acked), len(acked - present), round(switched, 2)


def _primary_or_none(cluster: RedisSentinelCluster) -> int | None:
    try:
        return cluster.primary()
    except AssertionError:
        return None


@pytest.mark.timeout(900)
@pytest.mark.parametrize("cluster", ["redis"], indirect=True)
@pytest.mark.parametrize("mode", ["plain", "wait"])
def test_redis_failover_window(cluster: RedisSentinelCluster, mode: str, report: Report) -> None:
    started = time.monotonic()
    rounds = [one_failover(cluster, wait=mode == "wait") for _ in range(ROUNDS)]
    result = Result(
        scenario="failover-window",
        broker=f"redis-cluster ({mode})",
        events=sum(r[0] for r in rounds),
        faults="SIGKILL of the primary during pipelined XADDs; the Sentinels promote the replica",
        fault_count=ROUNDS,
        lost=sum(r[1] for r in rounds),
        recovery_s=[r[2] for r in rounds],
        seconds=round(time.monotonic() - started, 1),
        extra={
            "acked_per_failover": [r[0] for r in rounds],
            "lost_per_failover": [r[1] for r in rounds],
        },
        notes=(
            "acknowledged: each XADD answered"
            if mode == "plain"
            else "acknowledged: WAIT 1 1000 after each batch of 100 said the replica has it"
        )
        + "; recovery_s: the kill to the Sentinels naming the replica primary",
    )
    report.add(result)
    if mode == "wait":
        assert result.lost == 0, result


@pytest.mark.timeout(300)
@pytest.mark.parametrize("cluster", ["redis"], indirect=True)
def test_wait_replicas_refuses_what_no_replica_confirmed(cluster: RedisSentinelCluster) -> None:
    """With ``wait_replicas=1`` a publish the replica did not confirm within
    ``wait_timeout`` is an error (retried by the bus, then raised), not a confirmation."""
    url = f"{cluster.url}&wait_replicas=1&wait_timeout=0.3"
    topic = f"wait-{uuid.uuid4().hex[:8]}"
    event_cls = on_topic(topic)

    async def scenario() -> None:
        async with EventBus.from_url(url) as bus:
            await bus.publish(event_cls(seq=1))  # the replica is up: confirmed
            replica = 1 - cluster.primary()
            await asyncio.to_thread(cluster.kill, replica)
            try:
                with pytest.raises(BrokerConnectionError, match="WAIT: 0 of wait_replicas=1"):
                    await asyncio.wait_for(bus.publish(event_cls(seq=2)), 120)
            finally:
                await asyncio.to_thread(cluster.revive, replica)
            await bus.publish(event_cls(seq=3))

    asyncio.run(scenario())
