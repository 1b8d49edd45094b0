"""Surviving a broker restart: what the broker confirmed is never lost."""

from __future__ import annotations

import asyncio
import contextlib
import inspect

from eventbus.errors import EventBusError
from eventbus.testing.collector import Collector
from eventbus.testing.conformance._events import Ping, on_topic
from eventbus.testing.conformance._support import Capability, Case, case, requires

PERSISTENT = "only a persistent broker keeps confirmed messages across a restart"


class RestartCases:
    """The broker process goes down mid-stream and comes back on the same data."""

    @case(
        requires(Capability.restart_hook, "the case restarts the broker"),
        requires(Capability.persistent, PERSISTENT),
        timeout=150.0,
    )
    async def test_broker_restart_loses_nothing_acknowledged(self, run: Case) -> None:
        """Stop the broker while a consumer works through a stream and a publisher keeps
        publishing, start it again on the same data: every message whose publish
        was confirmed is handled (duplicates are allowed, at-least-once; loss is not),
        and both the consumer and the publisher carry on by themselves."""
        assert run.target.restart is not None
        event_cls = on_topic(Ping, run.topic())
        handled: Collector[int] = Collector("handled")
        consumer = run.bus()

        @consumer.subscribe(event_cls, group=run.group())
        async def handle(event: Ping) -> None:
            await asyncio.sleep(0.002)  # still working through the stream at the restart
            handled.add(event.seq)

        await consumer.start()
        publisher = await run.publisher()
        count = run.count(200, minimum=40)
        confirmed: set[int] = set(range(count))
        await publisher.publish_many([event_cls(seq=i) for i in confirmed])
        await handled.wait_count(min(10, count), timeout=30.0)

        # Publishes go on during the restart; only those the broker confirmed count.
        stop_publishing = asyncio.Event()
        next_seq = count

        async def keep_publishing() -> None:
            nonlocal next_seq
            while not stop_publishing.is_set():
                seq, next_seq = next_seq, next_seq + 1
                with contextlib.suppress(EventBusError, TimeoutError):
                    await asyncio.wait_for(publisher.publish(event_cls(seq=seq)), 10.0)
                    confirmed.add(seq)
                await asyncio.sleep(0.02)

        background = asyncio.create_task(keep_publishing())
        await asyncio.sleep(0.2)
        await _restart(run)
        stop_publishing.set()
        await background
        after = list(range(next_seq, next_seq + count))
        await publisher.publish_many([event_cls(seq=i) for i in after])
        confirmed.update(after)
        await handled.wait(
            lambda items: set(items) >= confirmed,
            f"all {len(confirmed)} confirmed messages after the restart",
            timeout=90.0,
        )


async def _restart(run: Case) -> None:
    """Run the target's restart hook: a coroutine function in the loop, anything
    else (a process restart that blocks) in a thread."""
    restart = run.target.restart
    assert restart is not None
    if inspect.iscoroutinefunction(restart):
        await restart()
    else:
        await asyncio.to_thread(restart)
