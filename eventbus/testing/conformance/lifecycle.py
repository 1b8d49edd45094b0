"""Starting, stopping and surviving: cancellation, shutdown without loss, reconnects."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.bus import EventBus
from eventbus.context import Context
from eventbus.testing.collector import Collector
from eventbus.testing.conformance._events import Ping, on_topic, record_seqs
from eventbus.testing.conformance._support import (
    FAST_RETRY,
    QUIET,
    WAIT,
    Capability,
    Case,
    case,
    requires,
)

GROUPS = "competing consumers within a group and fan-out across groups"
PERSISTENT = "unhandled messages must wait for the group's next consumer"
FETCH_AHEAD = 1.0
"""Seconds a subscription is left open, unread, for an adapter that fetches ahead to do so."""


class LifecycleCases:
    """Nothing is lost when consumers come and go or the connection breaks."""

    @case()
    async def test_subscribe_cancellation_clean(self, run: Case) -> None:
        """Adapter level: closing a subscription that is waiting for messages ends its
        iteration cleanly, cancelling the waiting task is clean too, and the group
        still receives messages on a new subscription afterwards."""
        adapter = await run.connected_adapter()
        topic, group = run.topic(), run.group()
        closing = await adapter.subscribe(topic, SubscribeOptions(group=group))
        closing_waits = asyncio.Event()
        waiting = asyncio.create_task(_first(closing, closing_waits))
        # A second member of the group where groups compete; elsewhere (Redis Pub/Sub)
        # a second live member is refused, so the second waiter takes its own group.
        second = group if run.caps.consumer_groups else run.group()
        abandoned = await adapter.subscribe(topic, SubscribeOptions(group=second))
        abandoned_waits = asyncio.Event()
        cancelled = asyncio.create_task(_first(abandoned, abandoned_waits))
        # Each task sets its event right before iterating and keeps running until the
        # iteration suspends, so once both events are seen both tasks are blocked.
        await asyncio.wait_for(closing_waits.wait(), 5.0)
        await asyncio.wait_for(abandoned_waits.wait(), 5.0)
        assert not waiting.done() and not cancelled.done(), "iteration ended with no message"
        await closing.close()
        assert await asyncio.wait_for(waiting, 5.0) is None, "closed subscription yielded"
        cancelled.cancel()
        done, _ = await asyncio.wait([cancelled], timeout=5.0)
        assert done and cancelled.cancelled(), "a waiting subscription ignored cancellation"
        await abandoned.close()
        collector = await run.collect(adapter, topic, group)
        publisher = await run.publisher()
        await publisher.publish(on_topic(Ping, topic)(seq=1))
        (delivery,) = await collector.inbox.wait_count(1)
        assert delivery.envelope is not None
        await delivery.ack()

    @case(requires(Capability.consumer_groups, GROUPS), requires(Capability.persistent, PERSISTENT))
    async def test_concurrent_close_no_loss(self, run: Case) -> None:
        """Many consumers of one group stopped at the same moment, mid-stream, stop
        without error; a new consumer then handles everything they did not."""
        event_cls = on_topic(Ping, run.topic())
        group = run.group()
        handled: Collector[int] = Collector("handled")
        buses = []
        for _ in range(run.count(6, minimum=3)):
            bus = run.bus()

            @bus.subscribe(event_cls, group=group)
            async def handle(event: Ping) -> None:
                await asyncio.sleep(0.005)
                handled.add(event.seq)

            buses.append(bus)
        await asyncio.gather(*(bus.start() for bus in buses))
        count = run.count(150, minimum=30)
        await (await run.publisher()).publish_many([event_cls(seq=i) for i in range(count)])
        await handled.wait_count(count // 4)
        await asyncio.gather(*(bus.stop(timeout=2.0) for bus in buses))
        await run.consumer(event_cls, record_seqs(handled), group=group)
        await handled.wait(lambda items: set(items) >= set(range(count)), "every message")

    @case(
        requires(Capability.consumer_groups, GROUPS),
        requires(Capability.persistent, PERSISTENT),
        timeout=90.0,
    )
    async def test_fetched_and_given_back_unrun_spends_no_budget(self, run: Case) -> None:
        """A consumer closed while holding messages it fetched ahead and never handed to
        a handler gives them back unrun. When that happens to one message more times than
        ``max_attempts`` (consumers closing one after another, each with its own adapter,
        as when several stop at once and pass it around), the next consumer still runs
        it, once, and does not dead-letter it as a crash loop: the broker's delivery
        count grew, yet no handler ever started on it."""
        event_cls, topic, group, dlq = await run.watched_ping()
        handled: Collector[tuple[int, int]] = Collector("handled (seq, attempt)")

        async def record(event: Ping, ctx: Context) -> None:
            handled.add((event.seq, ctx.attempt))

        # The group exists, and has settled a message, before the one passed around.
        first = await run.consumer(event_cls, record, group=group)
        await (await run.publisher()).publish(event_cls(seq=0))
        await handled.wait_count(1)
        await first.stop()
        await (await run.publisher()).publish(event_cls(seq=1))
        for _ in range(FAST_RETRY.max_attempts + 1):
            adapter = await run.connected_adapter()
            subscription = await adapter.subscribe(topic, SubscribeOptions(group=group))
            await asyncio.sleep(FETCH_AHEAD)  # time to fetch; nothing takes it from here
            await subscription.close()
            await adapter.close()
        await run.consumer(event_cls, record, group=group)
        await handled.wait(lambda items: len(items) >= 2, "the message given back unrun")
        await asyncio.sleep(QUIET)
        seqs = [seq for seq, _ in handled.items]
        assert seqs == [0, 1], f"handled {handled.items}; dead letters: {len(dlq.items)}"
        assert not dlq.items, "a message no handler ever started was dead-lettered"

    @case(
        requires(Capability.consumer_groups, GROUPS),
        requires(Capability.persistent, PERSISTENT),
        timeout=120.0,
    )
    async def test_stopped_while_busy_again_and_again_spends_no_budget(self, run: Case) -> None:
        """A busy service stopped more times than ``max_attempts`` (each time its handler
        cut short by the shutdown timeout and the rest of what it fetched still waiting,
        in the bus or the adapter) loses nothing to the crash-loop guard: the next
        consumer handles every message and dead-letters none. Through buses, as a
        service runs them; the case above holds the adapter alone."""
        event_cls, _, group, dlq = await run.watched_ping()
        handled: Collector[int] = Collector("handled")
        first = await run.consumer(event_cls, record_seqs(handled), group=group)
        await (await run.publisher()).publish(event_cls(seq=0))
        await handled.wait_count(1)
        await first.stop()
        count = 5
        await (await run.publisher()).publish_many([event_cls(seq=i) for i in range(1, count)])
        for _ in range(FAST_RETRY.max_attempts + 1):
            started = asyncio.Event()
            bus = run.bus()
            bus.subscribe(event_cls, group=group, concurrency=1)(_stuck(started))
            await bus.start()
            await asyncio.wait_for(started.wait(), WAIT)
            await asyncio.sleep(FETCH_AHEAD)  # the rest fetched, waiting behind it
            await bus.stop(timeout=0.2)
        await run.consumer(event_cls, record_seqs(handled), group=group)
        await handled.wait(lambda items: set(items) >= set(range(count)), "every message")
        await asyncio.sleep(QUIET)
        assert not dlq.items, f"dead-lettered {[e.id for e in dlq.items]}: none ever ran"

    @case(requires(Capability.consumer_groups, GROUPS), requires(Capability.persistent, PERSISTENT))
    async def test_graceful_shutdown_finishes_in_flight(self, run: Case) -> None:
        """``bus.stop(timeout)`` lets handlers already running finish and acks them; a
        new consumer of the group handles the rest, and nothing finished is repeated.
        The first consumer may hold only two messages (prefetch), so the rest are left
        for the second one."""
        event_cls = on_topic(Ping, run.topic())
        group = run.group()
        started: Collector[int] = Collector("started")
        first_done: Collector[int] = Collector("finished before stop")
        later_done: Collector[int] = Collector("finished after restart")
        release = asyncio.Event()
        first, second = run.bus(prefetch_per_worker=1), run.bus()

        @first.subscribe(event_cls, group=group, concurrency=2)
        async def slow(event: Ping) -> None:
            started.add(event.seq)
            await release.wait()
            first_done.add(event.seq)

        second.subscribe(event_cls, group=group)(record_seqs(later_done))
        count = await _two_started(run, first, event_cls, started, 10)
        stopping = asyncio.create_task(first.stop(timeout=10.0))
        await asyncio.sleep(QUIET)  # the stop must wait for the running handlers
        assert not stopping.done(), "stop() returned while handlers were still running"
        release.set()
        await stopping
        assert set(started.items) == set(first_done.items), "an in-flight handler was cut off"
        rest = set(range(count)) - set(first_done.items)
        assert rest, "the first consumer took every message: the second was never exercised"
        await second.start()
        await later_done.wait(lambda items: set(items) >= rest, f"the other {len(rest)}")
        assert not set(first_done.items) & set(later_done.items), "finished work was repeated"

    @case(
        requires(Capability.consumer_groups, GROUPS),
        requires(Capability.persistent, PERSISTENT),
        requires(Capability.redelivery, "unfinished messages must go back to the broker"),
    )
    async def test_shutdown_timeout_returns_unfinished(self, run: Case) -> None:
        """Handlers still running when the stop timeout expires are cancelled and their
        messages go back to the broker: the next consumer handles every one of them."""
        event_cls = on_topic(Ping, run.topic())
        group = run.group()
        started: Collector[int] = Collector("started")
        finished: Collector[int] = Collector("finished")
        slow = True
        first, second = run.bus(), run.bus()

        @first.subscribe(event_cls, group=group, concurrency=2)
        async def stuck(event: Ping) -> None:
            started.add(event.seq)
            if slow:
                await asyncio.sleep(30)
            finished.add(event.seq)

        second.subscribe(event_cls, group=group)(record_seqs(finished))
        count = await _two_started(run, first, event_cls, started, 6)
        await first.stop(timeout=0.2)
        slow = False
        assert finished.items == []
        await second.start()
        await finished.wait(lambda items: set(items) >= set(range(count)), "every message")

    @case(requires(Capability.fault_hooks, "the case drops the broker connections"))
    async def test_reconnect_after_connection_drop(self, run: Case) -> None:
        """After every connection drops, subscribers and publishers reconnect by
        themselves: everything published before and after arrives (duplicates are
        allowed, at-least-once; loss is not)."""
        assert run.target.faults is not None
        count = run.count(10)
        event_cls, got, publisher = await _flowing_through_faults(run, count)
        await run.target.faults.drop_connections()
        for seq in range(count, 2 * count):
            await publisher.publish(event_cls(seq=seq))
        await got.wait(
            lambda items: set(items) >= set(range(2 * count)), "both batches", timeout=30.0
        )

    @case(requires(Capability.fault_hooks, "the case makes the broker refuse connections"))
    async def test_publish_retries_while_refused(self, run: Case) -> None:
        """While the broker refuses connections, publishes retry instead of failing
        and subscribers resubscribe; once it accepts again everything arrives."""
        assert run.target.faults is not None
        count = run.count(5)
        event_cls, got, publisher = await _flowing_through_faults(run, count)
        refusal = asyncio.create_task(run.target.faults.refuse_connections(1.0))
        await asyncio.sleep(0.1)  # let the refusal begin before publishing into it
        for seq in range(count, 2 * count):
            await publisher.publish(event_cls(seq=seq))
        await refusal
        await got.wait(
            lambda items: set(items) >= set(range(2 * count)), "both batches", timeout=30.0
        )


async def _two_started(
    run: Case, first: EventBus, event_cls: type[Ping], started: Collector[int], count: int
) -> int:
    """Start ``first`` and publish ``run.count(count)`` events to it; return that number
    once two of its handlers have started."""
    await first.start()
    count = run.count(count)
    await (await run.publisher()).publish_many([event_cls(seq=i) for i in range(count)])
    await started.wait_count(2)
    return count


async def _flowing_through_faults(
    run: Case, count: int
) -> tuple[type[Ping], Collector[int], EventBus]:
    """A consumer and a publisher on the faulty URL, with ``count`` events already
    through: the reconnect cases break the path only once it is proven to work."""
    assert run.target.faulty_url is not None
    event_cls = on_topic(Ping, run.topic())
    got: Collector[int] = Collector("handler")
    await run.consumer(
        event_cls, record_seqs(got), group=run.group(), bus=run.bus(run.target.faulty_url)
    )
    publisher = await run.publisher(run.target.faulty_url)
    await publisher.publish_many([event_cls(seq=i) for i in range(count)])
    await got.wait(lambda items: set(items) >= set(range(count)), "the first batch")
    return event_cls, got, publisher


def _stuck(started: asyncio.Event) -> Callable[[Ping], Awaitable[None]]:
    """A handler that says it started, then runs until the shutdown timeout cuts it short."""

    async def stuck(event: Ping) -> None:
        started.set()
        await asyncio.Event().wait()

    return stuck


async def _first(subscription: Subscription, iterating: asyncio.Event) -> Delivery | None:
    """The first delivery of ``subscription``, or ``None`` if iteration just ends;
    sets ``iterating`` as it starts waiting."""
    iterating.set()
    async for delivery in subscription:
        return delivery
    return None
