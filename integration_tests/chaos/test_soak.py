"""Soak (long profile): 1,000,000 events through the default chain on memory and on the
two fastest real brokers of the benchmarks (Kafka, NATS JetStream; docs/adapters).

The consumer's resident memory and open descriptors are sampled every second: once
warm (past the first quarter) they stay flat, and the throughput stays steady. Every
event is handled.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from eventbus import EventBus
from integration_tests.chaos.app import on_topic
from integration_tests.chaos.report import Report, Result
from integration_tests.chaos.scenario import fleet, sample
from integration_tests.chaos.targets import ChaosTarget, chaos_target, long_profile

ROOT = str(Path(__file__).resolve().parents[2])
EVENTS = 1_000_000
SHORT_EVENTS = 50_000  # the short profile checks the scenario itself, on memory only
BACKLOG = 20_000  # events published ahead of the consumer
RSS_GROWTH_MIB = 25.0  # allowed growth of RSS from the warm mark to the end
FD_GROWTH = 4
SOAK_BROKERS = ("memory", "kafka", "nats")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # The short profile checks the scenario itself, on memory only.
    brokers = SOAK_BROKERS if long_profile(metafunc.config) else ("memory",)
    metafunc.parametrize("broker", brokers)


@pytest.mark.timeout(2400)
def test_soak(broker: str, long: bool, report: Report, workdir: Path) -> None:
    events = EVENTS if long else SHORT_EVENTS
    if broker == "memory":
        samples, total = asyncio.run(_memory(events, 1.0 if long else 0.1))
    else:
        samples, total = asyncio.run(_real(chaos_target(broker), events, workdir))
    result = _judge(broker, events, samples, total)
    report.add(result)
    assert result.lost == 0
    assert result.extra["rss_growth_mib"] <= RSS_GROWTH_MIB, result.extra
    assert result.extra["fd_growth"] <= FD_GROWTH, result.extra
    assert result.extra["throughput_ratio"] >= 0.5, result.extra


async def _memory(events: int, every: float) -> tuple[list[dict[str, float]], int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "integration_tests.chaos.soak_memory",
        str(events),
        str(every),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    assert process.stdout is not None
    samples, total = [], 0
    async for raw in process.stdout:
        line = json.loads(raw)
        if "total" in line:
            total = int(line["total"])
        else:
            samples.append(line)
    assert await process.wait() == 0
    return samples, total


async def _real(
    target: ChaosTarget, events: int, workdir: Path
) -> tuple[list[dict[str, float]], int]:
    async with fleet(target, workdir, expect=str(events)) as crew:
        consumer = await crew.spawn()
        progress = crew.journal.path
        event_cls = on_topic(crew.topic)
        samples: list[dict[str, float]] = []
        started = time.monotonic()

        def handled() -> int:
            try:
                return int(progress.read_text().split()[0])
            except (FileNotFoundError, IndexError, ValueError):
                return 0

        async def sampler() -> None:
            while True:
                rss, fds = sample(consumer.pid)
                samples.append(
                    {
                        "t": round(time.monotonic() - started, 2),
                        "handled": handled(),
                        "rss_mib": round(rss, 1),
                        "fds": fds,
                    }
                )
                await asyncio.sleep(1.0)

        task = asyncio.create_task(sampler())
        try:
            async with EventBus.from_url(target.url) as publisher:
                for start in range(0, events, 1000):
                    while start - handled() > BACKLOG:
                        assert consumer.running, crew.logs()
                        await asyncio.sleep(0.05)
                    await publisher.publish_many(
                        [event_cls(seq=s) for s in range(start, min(events, start + 1000))]
                    )
            deadline = time.monotonic() + 600
            while True:
                if handled() >= events or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        finally:
            task.cancel()
        return samples, handled()


def _judge(broker: str, events: int, samples: list[dict[str, float]], total: int) -> Result:
    assert len(samples) >= 4, f"too few samples: {samples}"
    warm = next((s for s in samples if s["handled"] >= events // 4), samples[len(samples) // 4])
    after = [s for s in samples if s["t"] >= warm["t"]]
    rss_growth = max(s["rss_mib"] for s in after) - warm["rss_mib"]
    fd_growth = max(s["fds"] for s in after) - warm["fds"]
    half = next((s for s in samples if s["handled"] >= events // 2), samples[-1])
    end = next((s for s in samples if s["handled"] >= events * 9 // 10), samples[-1])
    first_rate = (half["handled"] - warm["handled"]) / max(0.001, half["t"] - warm["t"])
    last_rate = (end["handled"] - half["handled"]) / max(0.001, end["t"] - half["t"])
    return Result(
        scenario="soak",
        broker=broker,
        events=events,
        faults="none (a million events)",
        lost=events - total,
        seconds=samples[-1]["t"],
        extra={
            "rss_warm_mib": warm["rss_mib"],
            "rss_max_mib": max(s["rss_mib"] for s in after),
            "rss_growth_mib": round(rss_growth, 1),
            "fd_growth": fd_growth,
            "events_per_s_25_50": round(first_rate),
            "events_per_s_50_90": round(last_rate),
            "throughput_ratio": round(last_rate / max(1.0, first_rate), 2),
            "samples": [[s["t"], s["handled"], s["rss_mib"], s["fds"]] for s in samples],
        },
        notes="RSS and descriptors of the consumer process, sampled every second",
    )
