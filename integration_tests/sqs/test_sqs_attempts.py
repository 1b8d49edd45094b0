"""How SQS's receive count becomes ``Delivery.attempt``, which the bus's crash-loop budget
trusts across processes (#18): receives given back unrun never count as runs, and the
last receive a redrive policy allows is never spent on an outage."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from eventbus_sqs import SqsAdapter

from eventbus import Context, EventBus, RetryPolicy
from eventbus.adapter import Delivery, SubscribeOptions
from eventbus.backoff import Backoff
from eventbus.deadletters import DeadLetters
from eventbus.envelope import Envelope
from eventbus.errors import IdempotencyStoreError
from eventbus.middleware.idempotency import ClaimResult, MemoryIdempotencyStore
from eventbus.testing.conformance import Collector, Ping, on_topic
from integration_tests import harness

pytestmark = pytest.mark.broker("sqs")


def _names(kind: str) -> tuple[str, str]:
    run = uuid.uuid4().hex[:10]
    return f"sqs-{kind}-{run}", f"g-{run}"


class _DownStore(MemoryIdempotencyStore):
    """An idempotency store whose first ``outage`` claims fail (a store that is down)."""

    def __init__(self, outage: int) -> None:
        super().__init__()
        self.outage, self.claims = outage, 0

    async def claim(self, key: str, lease: float) -> ClaimResult:
        self.claims += 1
        if self.claims <= self.outage:
            raise IdempotencyStoreError(f"store down (claim {self.claims}, injected)")
        return await super().claim(key, lease)


def test_last_receive_before_the_redrive_is_sent_anew(sqs_url: str) -> None:
    """With ``max_receive_count=2`` an idempotency store down for four deliveries would
    have SQS move the message to the redrive queue; instead, nacked on its last receive,
    it is sent anew carrying its receive count (attempt keeps counting) and is handled
    once the store answers. Nothing reaches the redrive queue."""
    topic, group = _names("redrive")

    async def body() -> None:
        event_cls = on_topic(Ping, topic)
        attempts: Collector[int] = Collector("attempts")
        store = _DownStore(outage=4)
        bus = EventBus(
            SqsAdapter(f"{sqs_url}&max_receive_count=2"),
            source="sqs-redrive",
            idempotency=store,
            redelivery_backoff=Backoff(initial=0.05, max_delay=0.2, jitter=0.0),
        )

        @bus.subscribe(event_cls, group=group)
        async def handle(event: Ping, ctx: Context) -> None:
            attempts.add(ctx.delivery.attempt)

        async with bus:
            await bus.publish(event_cls(seq=1))
            got = await attempts.wait_count(1, timeout=60)
            assert store.claims == 5 and got == [5], (store.claims, got)
            sqs = bus.adapter.sqs_client()  # type: ignore[attr-defined]
            await asyncio.sleep(1.0)
            held = {name: n for name, n in (await _held(sqs, topic)).items() if n}
            assert held == {}, f"left on the broker: {held}"

    asyncio.run(body())


async def _held(sqs: Any, prefix: str) -> dict[str, int]:
    held = {}
    for url in (await sqs.list_queues(QueueNamePrefix=prefix)).get("QueueUrls", []):
        attributes = await sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
        held[url.rsplit("/", 1)[1]] = sum(int(v) for v in attributes["Attributes"].values())
    return held


def test_messages_given_back_unrun_spend_no_retry_budget(sqs_url: str) -> None:
    """Messages buffered behind a busy handler whose visibility lapses in an outage are
    dropped unrun and come back with a higher receive count; that count must not be
    taken for runs: with max_attempts=1 they are handled, not dead-lettered as a crash
    loop (RunsExhaustedError)."""
    endpoint, proxy = harness.require_faulty("sqs")
    topic, group = _names("unrun")
    url = f"{endpoint.url}&visibility_timeout=3&wait_seconds=1&connect_timeout=1&read_timeout=4"

    async def body() -> None:
        event_cls = on_topic(Ping, topic)
        hold = asyncio.Event()
        done: Collector[int] = Collector("done")
        bus = EventBus(
            SqsAdapter(url),
            source="sqs-unrun",
            prefetch_per_worker=4,
            retry=RetryPolicy(max_attempts=1),
            stall_after=None,
        )

        @bus.subscribe(event_cls, group=group)  # one worker: the others wait unfetched
        async def work(event: Ping) -> None:
            if event.seq == 0:
                await hold.wait()
            done.add(event.seq)

        async with bus:
            await bus.publish(event_cls(seq=0))
            await asyncio.sleep(1.5)  # seq 0 is running
            await bus.publish_many([event_cls(seq=n) for n in (1, 2, 3)])
            await asyncio.sleep(2.0)  # received and buffered behind it
            await proxy.refuse_connections(5.0)  # their visibility lapses unextended
            await asyncio.sleep(5.5)
            hold.set()
            await done.wait(
                lambda seqs: {0, 1, 2, 3} <= set(seqs),
                "every message handled, none dead-lettered",
                timeout=60,
            )
            letters = await DeadLetters(bus.adapter).list(topic, group)
            assert letters == [], [x.reason for x in letters]

    try:
        asyncio.run(body())
    finally:
        time.sleep(0.5)


def test_receives_given_back_at_close_do_not_count_as_runs(sqs_url: str) -> None:
    """A message received but still buffered when its subscription closes goes back
    unrun: the next subscription sees attempt 1, not 2, whether of the same adapter or
    of one made anew in the same process (a bus restarted, or several of one service
    stopping at once and passing the message around)."""
    topic, group = _names("close")

    async def body() -> None:
        adapter = SqsAdapter(sqs_url)
        await adapter.connect()
        try:
            first = await adapter.subscribe(topic, SubscribeOptions(group=group))
            await adapter.publish(topic, [_envelope(1)])
            sqs = adapter.sqs_client()
            for _ in range(100):  # received (in flight), never iterated
                reply = await sqs.get_queue_attributes(
                    QueueUrl=first.queue_url,  # type: ignore[attr-defined]
                    AttributeNames=["ApproximateNumberOfMessagesNotVisible"],
                )
                if reply["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1":
                    break
                await asyncio.sleep(0.1)
            await first.close()
            second = await adapter.subscribe(topic, SubscribeOptions(group=group))
            delivery = await _first(second)
            assert delivery.attempt == 1, "a receive given back unrun was counted as a run"
            await second.close()  # handed out: the bus counts this one, not the adapter
            fresh = SqsAdapter(sqs_url)
            await fresh.connect()
            try:
                third = await fresh.subscribe(topic, SubscribeOptions(group=group))
                again = await _first(third)
                assert again.attempt == 2, (
                    f"attempt {again.attempt} after one receive given back unread and one "
                    "handed out: a new adapter of the same queue did not know the first"
                )
                await again.ack()
            finally:
                await fresh.close()
        finally:
            await adapter.close()

    asyncio.run(body())


def _envelope(n: int) -> Envelope:
    return Envelope.create(type="test.sqs", source="tests", data=b'{"n":%d}' % n)


async def _first(subscription: Any) -> Delivery:
    async def first() -> Delivery:
        async for delivery in subscription:
            return delivery
        raise AssertionError("subscription ended")

    return await asyncio.wait_for(first(), 10)
