"""The memory broker's soak, in a process of its own (the broker lives in-process).

``python -m integration_tests.chaos.soak_memory EVENTS [EVERY]`` publishes EVENTS
events through the default chain (correlation, retry, dead letter) while a
subscription handles them, and prints one JSON line every EVERY seconds (default 1):
events handled, RSS MiB, open descriptors; then a last line with the totals.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from eventbus import EventBus
from integration_tests.chaos.app import on_topic
from integration_tests.chaos.scenario import sample


async def soak(events: int, every: float) -> None:
    topic = "chaos-soak-memory"
    event_cls = on_topic(topic)
    bus = EventBus("memory://", source="chaos-soak", warn_after=None)
    seen = bytearray(events)
    handled = [0, 0]
    done = asyncio.Event()

    @bus.subscribe(event_cls, group="soak", start_from="earliest")
    async def handle(event: event_cls) -> None:  # type: ignore[valid-type]
        handled[1] += 1
        if not seen[event.seq]:  # type: ignore[attr-defined]
            seen[event.seq] = 1  # type: ignore[attr-defined]
            handled[0] += 1
            if handled[0] == events:
                done.set()

    started = time.monotonic()

    async def report() -> None:
        while True:
            rss, fds = sample(os.getpid())
            print(
                json.dumps(
                    {
                        "t": round(time.monotonic() - started, 2),
                        "handled": handled[0],
                        "rss_mib": round(rss, 1),
                        "fds": fds,
                    }
                ),
                flush=True,
            )
            await asyncio.sleep(every)

    async with bus:
        reporter = asyncio.create_task(report())
        for start in range(0, events, 1000):
            # Paced: the in-process broker holds what is not handled yet, and a backlog
            # of a million envelopes is not what the soak measures.
            while True:
                if start - handled[0] <= 5000:
                    break
                await asyncio.sleep(0.001)
            end = min(events, start + 1000)
            await bus.publish_many([event_cls(seq=s) for s in range(start, end)])
        await asyncio.wait_for(done.wait(), 600)
        reporter.cancel()
    print(
        json.dumps(
            {
                "total": handled[0],
                "runs": handled[1],
                "seconds": round(time.monotonic() - started, 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(soak(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 1.0))
