"""Core NATS buffers a slow subscriber's messages within bounds (issue #18, defect 6).

Core NATS is at-most-once by declaration: a subscriber slower than its publishers
cannot hold the server back, so its messages pile up in the process. They pile up
to ``pending_msgs`` messages / ``pending_bytes`` bytes per subscription (URL
options, 65,536 / 64 MiB by default), past which arrivals are dropped, counted
(``health()`` info ``dropped``) and logged, instead of growing until the process
is killed for memory and loses everything at once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from eventbus import Event, EventBus
from integration_tests import harness
from integration_tests.nats.support import run

pytestmark = [pytest.mark.broker("nats"), pytest.mark.timeout(120)]


def test_slow_core_subscriber_buffers_within_its_bounds(
    nats_endpoint: harness.Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    address = f"{nats_endpoint.host}:{nats_endpoint.port}"
    topic = f"nats.core.buffer.{uuid.uuid4().hex[:8]}"

    class Blob(Event, type=f"test.{topic}", topic=topic):
        data: str

    async def scenario() -> None:
        slow = EventBus.from_url(f"nats+core://{address}?pending_bytes=1048576", source="s")
        fast = EventBus.from_url(f"nats+core://{address}", source="p")
        started = asyncio.Event()

        @slow.subscribe(Blob, group="slow")
        async def handle(event: Blob) -> None:
            started.set()
            await asyncio.sleep(5)

        async with slow, fast:
            for _ in range(5):  # 5,000 messages of 1 KiB: ~5 MiB
                await fast.publish_many([Blob(data="x" * 1024) for _ in range(1000)])
            await asyncio.wait_for(started.wait(), 10)
            await asyncio.sleep(1.0)
            info = (await slow.adapter.health()).info
            buffered, dropped = int(info["buffered_bytes"]), int(info["dropped"])
        assert buffered <= 1048576, info
        assert dropped >= 3000, info
        warned = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and "dropping" in r.getMessage()
        ]
        assert warned and topic in warned[0], warned

    with caplog.at_level(logging.INFO, logger="eventbus.nats"):
        run(scenario())
