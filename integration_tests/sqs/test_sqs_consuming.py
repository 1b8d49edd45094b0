"""The SQS consumer's failure paths (#18), each through an ``EventBus`` as a service runs it:
visibility taken from the URL whatever the queue says, a deleted queue re-provisioned,
stale deliveries freeing their prefetch slot, heartbeats never racing a delete, and
FIFO batches of one key sent in order."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import aioboto3
import pytest
from eventbus_sqs import SqsAdapter, SqsSettings

from eventbus import EventBus
from eventbus.adapter import Delivery, SubscribeOptions
from eventbus.envelope import Envelope
from eventbus.errors import SubscriptionFailedError, TopicNotFoundError
from eventbus.testing.conformance import Collector, Ping, on_topic
from integration_tests import harness

pytestmark = pytest.mark.broker("sqs")


def _names(kind: str) -> tuple[str, str]:
    run = uuid.uuid4().hex[:10]
    return f"sqs-{kind}-{run}", f"g-{run}"


def _endpoint(url: str) -> str:
    endpoint = SqsSettings.from_url(url).endpoint_url
    assert endpoint is not None
    return endpoint


def test_visibility_comes_from_the_url_not_the_existing_queue(sqs_url: str) -> None:
    """Defect 20: the group's queue exists with a 1 s visibility timeout (an older
    deployment's); the URL says 20 s. A 5 s handler runs once: every receive asks for
    the URL's timeout, which the heartbeat renews."""
    topic, group = _names("vis")

    async def body() -> None:
        async with aioboto3.Session().client(
            "sqs", region_name="us-east-1", endpoint_url=_endpoint(sqs_url)
        ) as sqs:
            await sqs.create_queue(
                QueueName=f"{topic}--{group}", Attributes={"VisibilityTimeout": "1"}
            )
        event_cls = on_topic(Ping, topic)
        runs: Collector[int] = Collector("runs")
        done: Collector[int] = Collector("done")
        bus = EventBus(SqsAdapter(f"{sqs_url}&visibility_timeout=20"), source="sqs-vis")

        @bus.subscribe(event_cls, group=group, concurrency=2)
        async def slow(event: Ping) -> None:
            runs.add(event.seq)
            await asyncio.sleep(5)
            done.add(event.seq)

        async with bus:
            await bus.publish(event_cls(seq=1))
            await done.wait_count(1, timeout=30)
            await asyncio.sleep(1.5)  # a copy that reappeared would have started by now
        assert runs.items == [1], f"one event, handler ran {len(runs.items)} times"

    asyncio.run(body())


def test_deleted_queue_is_provisioned_again(sqs_url: str) -> None:
    """Defect 21: the group's queue is deleted while it is consumed: the subscription
    fails, subscribes again (re-creating the queue and its SNS subscription), and an
    event published after that is handled."""
    topic, group = _names("gone")

    async def body() -> None:
        event_cls = on_topic(Ping, topic)
        handled: Collector[int] = Collector("handled")
        bus = EventBus(SqsAdapter(sqs_url), source="sqs-gone", stall_after=None)

        @bus.subscribe(event_cls, group=group)
        async def handle(event: Ping) -> None:
            handled.add(event.seq)

        async with bus:
            await bus.publish(event_cls(seq=1))
            await handled.wait_count(1)
            sqs = bus.adapter.sqs_client()  # type: ignore[attr-defined]
            queue = (await sqs.get_queue_url(QueueName=f"{topic}--{group}"))["QueueUrl"]
            await sqs.delete_queue(QueueUrl=queue)
            deadline = time.monotonic() + 20
            seq = 1
            # Events published before the queue is back are lost by SNS (nobody is
            # subscribed): keep publishing until one arrives, then it must keep working.
            while time.monotonic() < deadline and len(handled) < 2:
                seq += 1
                await bus.publish(event_cls(seq=seq))
                await asyncio.sleep(0.5)
            assert len(handled) >= 2, "the deleted queue was never provisioned again"
            await bus.publish(event_cls(seq=1000))
            await handled.wait(lambda items: 1000 in items, "an event after recovery")
            health = await bus.health()
            assert health.ok, health.detail

    asyncio.run(body())


def test_deleted_queue_that_may_not_be_created_fails_the_subscription(sqs_url: str) -> None:
    """Defect 21: with provision=false a deleted queue cannot come back: the
    subscription dies visibly (health not ok) and ``bus.run()`` raises."""
    topic, group = _names("dead")

    async def body() -> None:
        maker = SqsAdapter(sqs_url)  # provisions the group (and its DLQ) once
        await maker.connect()
        await (await maker.subscribe(topic, SubscribeOptions(group=group))).close()
        event_cls = on_topic(Ping, topic)
        bus = EventBus(
            SqsAdapter(f"{sqs_url}&provision=false"), source="sqs-dead", stall_after=None
        )

        @bus.subscribe(event_cls, group=group)
        async def handle(event: Ping) -> None:
            pass

        run = asyncio.create_task(bus.run())
        try:
            for _ in range(100):  # subscribed
                health = await bus.health()
                if health.ok and [s.state for s in health.subscriptions] == ["running"]:
                    break
                await asyncio.sleep(0.1)
            sqs = maker.sqs_client()
            await sqs.delete_queue(
                QueueUrl=(await sqs.get_queue_url(QueueName=f"{topic}--{group}"))["QueueUrl"]
            )
            with pytest.raises(SubscriptionFailedError, match="does not exist"):
                await asyncio.wait_for(run, 30)
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
            await maker.close()

    asyncio.run(body())


def test_stale_deliveries_free_their_prefetch_slots(sqs_url: str) -> None:
    """Defect 22: deliveries waiting behind a busy handler of their key whose visibility
    lapsed during an outage are dropped by the bus as stale; each frees its slot, so
    afterwards as many handlers run at once as before."""
    endpoint, proxy = harness.require_faulty("sqs")
    topic, group = _names("leak")
    url = f"{endpoint.url}&visibility_timeout=3&wait_seconds=1&connect_timeout=1&read_timeout=4"

    async def body() -> None:
        event_cls = on_topic(Ping, topic)
        hold, resume = asyncio.Event(), asyncio.Event()
        started: Collector[int] = Collector("started")
        done: Collector[int] = Collector("done")
        bus = EventBus(SqsAdapter(url), source="sqs-leak", prefetch_per_worker=2, stall_after=None)

        @bus.subscribe(event_cls, group=group, concurrency=3)  # prefetch 6
        async def work(event: Ping) -> None:
            started.add(event.seq)
            if event.seq == 0:
                await hold.wait()
            if event.seq >= 100:
                await resume.wait()
            done.add(event.seq)

        async with bus:
            # Six of one key: one runs (held), five wait in its lane holding slots.
            await bus.publish_many([event_cls(seq=n) for n in range(6)], key="k")
            await started.wait_count(1)
            await asyncio.sleep(2)  # all six received
            await proxy.refuse_connections(5.0)  # heartbeats fail: the leases lapse
            await asyncio.sleep(5.5)
            hold.set()
            await done.wait(
                lambda seqs: set(range(6)) <= set(seqs),
                "all six handled (the stale ones redelivered)",
                timeout=60,
            )
            # Three unkeyed handlers that wait: all three must run at once.
            await bus.publish_many([event_cls(seq=100 + n) for n in range(3)])
            await started.wait(
                lambda seqs: sum(s >= 100 for s in seqs) == 3,
                "three handlers at once (concurrency=3)",
                timeout=20,
            )
            resume.set()

    try:
        asyncio.run(body())
    finally:
        time.sleep(0.5)


def test_settled_messages_are_never_heartbeated(
    sqs_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect 28: the delete of a settled message may still be on its way when the
    heartbeat runs; the heartbeat must not extend it (SQS answers ReceiptHandleIsInvalid
    once the delete landed, which was logged as a failed extension)."""
    topic, group = _names("beat")

    async def body() -> None:
        event_cls = on_topic(Ping, topic)
        done: Collector[int] = Collector("done")
        bus = EventBus(SqsAdapter(f"{sqs_url}&visibility_timeout=3"), source="sqs-beat")

        @bus.subscribe(event_cls, group=group, concurrency=4)
        async def work(event: Ping) -> None:
            await asyncio.sleep(1.2)  # past the heartbeat's first look (every 1 s)
            done.add(event.seq)

        async with bus:
            sqs = bus.adapter.sqs_client()  # type: ignore[attr-defined]
            real_delete = sqs.delete_message_batch

            async def slow_reply(**kwargs: Any) -> dict[str, Any]:
                # SQS has deleted them; the reply takes a while (a slow network).
                reply: dict[str, Any] = await real_delete(**kwargs)
                await asyncio.sleep(2.5)
                return reply

            sqs.delete_message_batch = slow_reply
            with caplog.at_level(logging.INFO, logger="eventbus.sqs"):
                await bus.publish_many([event_cls(seq=n) for n in range(8)])
                await done.wait_count(8, timeout=30)
                await asyncio.sleep(3.5)
        extensions = [r.getMessage() for r in caplog.records if "visibility" in r.getMessage()]
        assert not extensions, extensions

    asyncio.run(body())


def test_fifo_batches_of_one_key_are_sent_in_order(sqs_url: str) -> None:
    """Defect 23: ``publish_many`` of one key goes out in batches of 10; a later batch
    must not overtake an earlier one, or the key's events are handled out of order."""
    topic, group = _names("order")

    async def body() -> None:
        event_cls = on_topic(Ping, topic)
        got: Collector[int] = Collector("handled")
        bus = EventBus(SqsAdapter(f"{sqs_url}&fifo=true"), source="sqs-order")

        @bus.subscribe(event_cls, group=group)
        async def handle(event: Ping) -> None:
            got.add(event.seq)

        async with bus:
            seq = 0
            for _ in range(3):
                await bus.publish_many([event_cls(seq=seq + i) for i in range(40)], key="acct")
                seq += 40
            await got.wait_count(seq, timeout=90)
        inversions = [(a, b) for a, b in zip(got.items, got.items[1:], strict=False) if b < a]
        assert not inversions, f"handled out of order at {inversions[:5]}"

    asyncio.run(body())


def test_backlog_counts_visible_messages_only(sqs_url: str) -> None:
    """``backlog()`` is the group queue's visible messages: what this subscription holds
    (in flight) is not counted; a deleted queue is ``TopicNotFoundError``."""
    topic, group = _names("backlog")

    async def body() -> None:
        adapter = SqsAdapter(sqs_url)
        await adapter.connect()
        try:
            sub = await adapter.subscribe(topic, SubscribeOptions(group=group, prefetch=1))
            assert await sub.backlog() == 0
            await adapter.publish(topic, [_envelope(n) for n in range(4)])
            held = await _first(sub)  # one in flight, held by this subscription
            for _ in range(50):
                if await sub.backlog() == 3:
                    break
                await asyncio.sleep(0.1)
            assert await sub.backlog() == 3
            await held.ack()
            sqs = adapter.sqs_client()
            await sqs.delete_queue(QueueUrl=sub.queue_url)  # type: ignore[attr-defined]
            with pytest.raises(TopicNotFoundError):
                await sub.backlog()
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
