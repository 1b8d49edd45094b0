"""A handler slower than ``max_poll_interval`` runs once (#18 defect 25).

aiokafka makes a member leave its group when no ``getmany()`` was in progress for
``max_poll_interval``. An ``EventBus`` subscription with ``concurrency=1`` runs
each delivery inside its fetch loop, so the subscription's iterator is suspended
for the whole run of a handler: unless the adapter polls by itself meanwhile, the
member leaves, the other member of the group gets the record and runs it again.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from eventbus_kafka import KafkaAdapter

from eventbus import EventBus
from eventbus.testing.conformance import Collector, Ping, on_topic
from integration_tests.kafka.test_kafka_adapter import run, unique, with_options

pytestmark = [pytest.mark.broker("kafka"), pytest.mark.timeout(120)]


def test_a_handler_outliving_max_poll_interval_runs_once_on_an_inline_bus(kafka_url: str) -> None:
    """Two buses in one group, ``concurrency=1``, a 3 s poll interval, one record on a
    one-partition topic and a 7.5 s handler: it runs once, and a record published
    after it is handled too (the member kept its partition and goes on)."""

    async def scenario() -> None:
        url = with_options(kafka_url, partitions=1, max_poll_interval=3)
        event_cls = on_topic(Ping, unique("slow-inline"))
        group = unique("g")
        runs: Collector[tuple[str, int, float]] = Collector("runs")
        started = time.monotonic()
        buses = [
            EventBus(KafkaAdapter(url), source=f"slow-{name}", shutdown_timeout=10)
            for name in ("a", "b")
        ]

        def member(name: str, bus: EventBus) -> None:
            @bus.subscribe(event_cls, group=group, concurrency=1)
            async def handle(event: Ping) -> None:
                runs.add((name, event.seq, round(time.monotonic() - started, 1)))
                if event.seq == 0:
                    await asyncio.sleep(7.5)  # 2.5 times the poll interval

        for name, bus in zip(("a", "b"), buses, strict=True):
            member(name, bus)
            await bus.start()
        try:
            await buses[0].publish(event_cls(seq=0))
            await runs.wait(lambda items: len(items) >= 1, "the slow record", timeout=20)
            await asyncio.sleep(9)  # the slow run and then some
            await buses[0].publish(event_cls(seq=1))
            await runs.wait(
                lambda items: any(seq == 1 for _, seq, _ in items),
                "a record after the slow one",
                timeout=30,
            )
            slow = [item for item in runs.items if item[1] == 0]
            assert len(slow) == 1, f"the slow handler ran {len(slow)} times: {runs.items}"
        finally:
            for bus in buses:
                await bus.stop()

    run(scenario)
