"""Per-key order and the concurrency limit."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from eventbus.context import Context
from eventbus.middleware.retry import RetryPolicy
from eventbus.testing.collector import Collector
from eventbus.testing.conformance._events import Ping, on_topic
from eventbus.testing.conformance._support import QUIET, Capability, Case, case, requires


def _contains(seq: int) -> Callable[[list[int]], bool]:
    return lambda items: seq in items


async def _ordered_run(run: Case, retry: RetryPolicy | None) -> None:
    """Many keys, four workers, handlers awaiting a random short delay (and failing
    their first attempt on every third message when ``retry`` is given): each key's
    messages must be handled in order and never two at once, and different keys must
    have run at the same time (or the case proved nothing about parallelism)."""
    event_cls = on_topic(Ping, run.topic())
    keys = [f"key-{k}" for k in range(run.count(8, minimum=4))]
    per_key = run.count(20)
    got: Collector[tuple[str, int]] = Collector("handler")
    running: dict[str, int] = {}
    overlaps: list[str] = []
    peak = 0
    bus = run.bus()

    @bus.subscribe(event_cls, group=run.group(), concurrency=4, ordered=True, retry=retry)
    async def handle(event: Ping, ctx: Context) -> None:
        nonlocal peak
        if running.get(event.key):
            overlaps.append(f"{event.key}#{event.seq}")
        running[event.key] = running.get(event.key, 0) + 1
        peak = max(peak, sum(1 for n in running.values() if n))
        try:
            await asyncio.sleep(random.uniform(0, 0.004))  # shuffle timing across keys
            if retry is not None and event.seq % 3 == 1 and ctx.attempt == 1:
                raise RuntimeError(f"{event.key}#{event.seq} fails its first attempt")
            got.add((event.key, event.seq))
        finally:
            running[event.key] -= 1

    await bus.start()
    publisher = await run.publisher()

    async def publish_key(key: str) -> None:
        for seq in range(per_key):
            await publisher.publish(event_cls(key=key, seq=seq), key=key)

    await asyncio.gather(*(publish_key(key) for key in keys))
    await got.wait_count(len(keys) * per_key)
    for key in keys:
        seqs = [seq for k, seq in got.items if k == key]
        assert seqs == list(range(per_key)), f"{key} out of order: {seqs}"
    assert not overlaps, f"messages of one key ran at the same time: {overlaps[:5]}"
    assert peak > 1, "different keys never ran at the same time: nothing was tested"


class OrderingCases:
    """Parallel where allowed, ordered where promised."""

    @case(
        requires(Capability.per_key_ordering, "the case checks that one key's messages keep order")
    )
    async def test_in_order_per_key(self, run: Case) -> None:
        """With several workers, the messages of each partition key are handled in the
        order they were published, one at a time, while different keys overlap."""
        await _ordered_run(run, retry=None)

    @case(
        requires(
            Capability.per_key_ordering,
            "the case checks that retries keep one key's messages in order",
        )
    )
    async def test_in_order_per_key_under_retries(self, run: Case) -> None:
        """Handlers failing on every third message and succeeding on the in-process
        retry keep each key's order: a retrying message holds its key, not its worker's
        other keys (different keys still overlap)."""
        policy = RetryPolicy(max_attempts=3, in_process_attempts=3, initial_delay=0.005, jitter=0.0)
        await _ordered_run(run, retry=policy)

    @case(
        requires(Capability.per_key_ordering, "later messages of a key must wait for earlier ones")
    )
    async def test_unfinished_key_holds_later_same_key(self, run: Case) -> None:
        """While a message of key K is still being handled, later K messages wait
        (watched for a bounded grace period) and other keys keep flowing; once it
        finishes, K continues in order."""
        event_cls = on_topic(Ping, run.topic())
        release = asyncio.Event()
        started: Collector[tuple[str, int]] = Collector("started")
        finished: Collector[tuple[str, int]] = Collector("finished")
        bus = run.bus()

        @bus.subscribe(event_cls, group=run.group(), concurrency=4, ordered=True)
        async def handle(event: Ping) -> None:
            started.add((event.key, event.seq))
            if (event.key, event.seq) == ("held", 0):
                await release.wait()
            finished.add((event.key, event.seq))

        await bus.start()
        publisher = await run.publisher()
        await publisher.publish(event_cls(key="held", seq=0), key="held")
        await publisher.publish(event_cls(key="held", seq=1), key="held")
        others = [f"other-{i}" for i in range(12)]
        for key in others:
            await publisher.publish(event_cls(key=key, seq=0), key=key)
        await started.wait(lambda items: ("held", 0) in items, "the held message to start")
        await finished.wait(lambda items: len(items) >= 1, "another key to finish")
        await asyncio.sleep(QUIET)  # give the later K message the chance to jump the queue
        assert ("held", 1) not in started.items, "a later message of key K ran before K#0 ended"
        release.set()
        await finished.wait_count(2 + len(others))
        held = [seq for key, seq in finished.items if key == "held"]
        assert held == [0, 1]

    @case()
    async def test_idle_worker_takes_next_message(self, run: Case) -> None:
        """With two workers, a message without a key that arrives while one handler is
        stuck runs at once on the idle worker instead of queueing behind the stuck one."""
        event_cls = on_topic(Ping, run.topic())
        release = asyncio.Event()
        started: Collector[int] = Collector("started")
        finished: Collector[int] = Collector("finished")
        bus = run.bus()

        @bus.subscribe(event_cls, group=run.group(), concurrency=2)
        async def handle(event: Ping) -> None:
            started.add(event.seq)
            if event.seq == 0:
                await release.wait()
            finished.add(event.seq)

        await bus.start()
        publisher = await run.publisher()
        await publisher.publish(event_cls(seq=0))
        await started.wait_count(1)
        for seq in (1, 2):
            await publisher.publish(event_cls(seq=seq))
            await finished.wait(
                _contains(seq),
                f"message {seq} to finish on the idle worker while message 0 is stuck",
            )
        release.set()
        await finished.wait_count(3)

    @case()
    async def test_concurrency_limit_honoured(self, run: Case) -> None:
        """No more than ``concurrency`` handlers of a subscription run at once, and
        more than one does when messages are waiting."""
        event_cls = on_topic(Ping, run.topic())
        limit = 3
        active = 0
        peak: list[int] = []
        done: Collector[int] = Collector("handler")
        bus = run.bus()

        @bus.subscribe(event_cls, group=run.group(), concurrency=limit)
        async def handle(event: Ping) -> None:
            nonlocal active
            active += 1
            peak.append(active)
            await asyncio.sleep(0.02)
            active -= 1
            done.add(event.seq)

        await bus.start()
        count = run.count(30, minimum=10)
        await (await run.publisher()).publish_many([event_cls(seq=i) for i in range(count)])
        await done.wait_count(count)
        assert max(peak) <= limit, f"{max(peak)} handlers ran at once, limit {limit}"
        assert max(peak) > 1, "handlers never ran in parallel although messages waited"
