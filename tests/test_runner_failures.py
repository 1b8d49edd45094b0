"""Nothing dies silently: failures around the handler (cancellation, a failing ack, a
fetch that breaks or ends, a lost subscription's queued work, garbage on the topic)
are recovered from or surfaced, never swallowed."""

from __future__ import annotations

import logging

from bus_support import Inbox, Records, dlq_size, memory_url, new_topic, run, until

from eventbus import (
    Envelope,
    Event,
    EventBus,
    MemoryAdapter,
    RetryPolicy,
)


class Job(Event, type="test.runner.job", topic="test-runner-jobs"):
    n: int


def test_undecodable_message_is_rejected_not_dead_lettered_when_dead_letters_are_off() -> None:
    async def scenario() -> None:
        url, topic = memory_url(), new_topic()
        bus = EventBus(url, dead_letter=False, retry=RetryPolicy(max_attempts=1))
        handled: Inbox[int] = Inbox()

        @bus.subscribe(topic, group="g")
        async def handle(event: Job) -> None:
            handled.add(event.n)

        with Records("eventbus") as logs:
            async with bus:
                adapter = MemoryAdapter(url)
                await adapter.publish_raw(topic, b"\x00 not a cloudevent")
                good = Envelope.create(type="test.runner.job", source="t", data=b'{"n": 7}')
                await adapter.publish(topic, [good])
                assert await handled.wait_count(1) == [7]
                await until(lambda: any("undecodable" in m and "rejected" in m
                                        for m in logs.messages(logging.ERROR)))
        assert dlq_size(url, topic, "g") == 0

    run(scenario)


