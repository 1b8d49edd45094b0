"""Dead letters of binary data are sized as the records they are (#18 defect 27).

In binary mode bytes data travel as the record value, as they are. The dead-letter
step used to size a letter as structured JSON (bytes as base64, a third larger), so
a 6 KB binary event the broker took lost its data in the dead letter under an 8 KB
limit, although the binary letter fits. The adapter now judges the size itself.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from eventbus_kafka import KafkaAdapter

from eventbus import DeadLetters, EventBus
from eventbus.deadletters import ListedDeadLetter
from eventbus.envelope import Envelope
from eventbus.middleware.retry import RetryPolicy
from integration_tests.kafka.test_kafka_adapter import run, unique, with_options

pytestmark = [pytest.mark.broker("kafka"), pytest.mark.timeout(120)]

LIMIT = 8192


def binary_event(size: int) -> Envelope:
    return Envelope.create(
        type="test.blob",
        source="kafka-tests",
        data=os.urandom(size),
        datacontenttype="application/octet-stream",
    )


def test_a_binary_event_keeps_its_data_in_a_dead_letter_that_fits(kafka_url: str) -> None:
    """6 KB of bytes under an 8 KB limit: the letter keeps the data (the traceback may
    go); 7.7 KB, taken by the broker but too large once the dead-letter attributes are
    added: the letter is still stored, as a reference without the data."""

    async def scenario() -> None:
        url = with_options(kafka_url, partitions=1, max_message_bytes=LIMIT)
        topic, group = unique("dlq-size"), unique("g")
        bus = EventBus(
            KafkaAdapter(url),
            source="dlq-size",
            shutdown_timeout=5,
            retry=RetryPolicy(max_attempts=1),
        )

        @bus.subscribe(topic, group=group)
        async def handle(envelope: Envelope) -> None:
            raise RuntimeError("the downstream refused it")

        fits, oversize = binary_event(6 * 1024), binary_event(7700)
        async with bus:
            await bus.adapter.publish(topic, [fits])  # taken: binary mode, under 8 KB
            await bus.adapter.publish(topic, [oversize])
            letters = await _wait_letters(DeadLetters(bus.adapter), topic, group, 2)
        by_id = {letter.envelope.id: letter for letter in letters}
        kept = by_id[fits.id]
        assert kept.envelope.data == fits.data, f"data lost under the limit: {kept.dropped}"
        assert "data" not in kept.dropped and kept.replayable
        shrunk = by_id[oversize.id]
        assert "data" in shrunk.dropped and shrunk.envelope.data == b"", shrunk.dropped

    run(scenario)


async def _wait_letters(
    dead: DeadLetters, topic: str, group: str, count: int
) -> list[ListedDeadLetter]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        try:
            letters = list(await dead.list(topic, group))
        except Exception:  # the DLQ topic is created with the first letter
            letters = []
        if len(letters) >= count or loop.time() > deadline:
            assert len(letters) >= count, f"{len(letters)} dead letters, wanted {count}"
            return letters
        await asyncio.sleep(0.3)
