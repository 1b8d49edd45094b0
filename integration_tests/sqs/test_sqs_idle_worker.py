"""An idle worker takes the next message while the other's handler is stuck, even
when the idle worker's previous message is still being deleted.

SQS acks are a ``DeleteMessageBatch`` round trip. A worker whose handler has
finished but whose delete is in flight looked exactly as busy to the bus's
dispatch as a worker whose handler is stuck, and the tie went to the stuck one:
the next message then waited behind a handler that may never end (the
conformance case ``test_idle_worker_takes_next_message`` failed that way whenever
the delete came back after the next receive). The test holds the delete until
the next message has been received, so the race is lost every time.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from eventbus_sqs import SqsAdapter

from eventbus import EventBus
from eventbus.testing.conformance import Collector, Ping, on_topic

pytestmark = pytest.mark.broker("sqs")


def test_idle_worker_takes_next_message_while_its_last_delete_is_in_flight(sqs_url: str) -> None:
    async def body() -> None:
        run = uuid.uuid4().hex[:10]
        event_cls = on_topic(Ping, f"sqs-idle-t-{run}")
        release = asyncio.Event()
        started: Collector[int] = Collector("started")
        finished: Collector[int] = Collector("finished")
        bus = EventBus(SqsAdapter(sqs_url), source=f"sqs-idle-{run}", shutdown_timeout=5.0)

        @bus.subscribe(event_cls, group=f"sqs-idle-g-{run}", concurrency=2)
        async def handle(event: Ping) -> None:
            started.add(event.seq)
            if event.seq == 0:
                await release.wait()
            finished.add(event.seq)

        await bus.start()
        sqs = bus.adapter.sqs_client()  # type: ignore[attr-defined]
        real_receive, real_delete = sqs.receive_message, sqs.delete_message_batch
        armed = False  # set once message 2 is on its way
        received_next = False
        deletes_may_go = asyncio.Event()

        async def receive_message(**kwargs: Any) -> dict[str, Any]:
            # The receiver calls again only after queueing the previous reply's
            # messages and waking the dispatch, which runs first: message 2 has been
            # handed to a worker by the time deletes go on.
            nonlocal received_next
            if received_next:
                deletes_may_go.set()
            reply: dict[str, Any] = await real_receive(**kwargs)
            if armed and reply.get("Messages"):
                received_next = True
            return reply

        async def delete_message_batch(**kwargs: Any) -> dict[str, Any]:
            await deletes_may_go.wait()
            reply: dict[str, Any] = await real_delete(**kwargs)
            return reply

        sqs.receive_message = receive_message
        sqs.delete_message_batch = delete_message_batch
        try:
            await bus.publish(event_cls(seq=0))
            await started.wait_count(1)
            await bus.publish(event_cls(seq=1))
            await finished.wait(lambda items: 1 in items, "message 1 to finish")
            # Message 1's worker is now waiting for its delete, held until message 2
            # has been received.
            armed = True
            await bus.publish(event_cls(seq=2))
            await finished.wait(
                lambda items: 2 in items,
                "message 2 to run on the worker that finished message 1 while message 0 is stuck",
                timeout=8.0,
            )
            release.set()
            await finished.wait_count(3)
        finally:
            release.set()
            deletes_may_go.set()
            await bus.stop()

    asyncio.run(body())
