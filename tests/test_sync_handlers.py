"""Plain ``def`` handlers run in a bounded pool of worker threads, so blocking code
(a sync database driver, an SDK without asyncio) does not stall the event loop; their
context publishes from the thread through the loop. What a thread cannot do (be
cancelled by a timeout or a stop) is stated in the guide and shown here."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from eventbus import Context, EventBus, RetryPolicy, SyncContext, UsageError
from eventbus.testing import TestBus, call_handler, without_delays
from tests.bus_support import ChargeCard, OrderPlaced, PaymentTaken, memory_url


def test_a_sync_handler_runs_in_a_worker_thread_and_publishes_through_its_context() -> None:
    bus = EventBus(memory_url(), source="sync")
    threads: list[str] = []

    @bus.subscribe(OrderPlaced, group="billing")
    def charge(event: OrderPlaced, ctx: Context) -> None:
        threads.append(threading.current_thread().name)
        time.sleep(0.05)  # blocking, as sync code is: the loop goes on meanwhile
        ctx.publish(PaymentTaken(order_id=event.order_id))

    async def scenario() -> None:
        async with TestBus(bus) as tb:
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.005)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            await tb.bus.publish(OrderPlaced(order_id="1"))
            await tb.drain()
            ticker.cancel()
            assert tb.received(charge) == [OrderPlaced(order_id="1")]
            assert tb.published(PaymentTaken) == [PaymentTaken(order_id="1")]
            (sent,) = tb.published_envelopes(PaymentTaken.default_topic())
            (got,) = tb.published_envelopes(OrderPlaced.default_topic())
            assert sent.causationid == got.id  # correlation carried as from ctx.publish
            assert ticks >= 3, "the event loop was blocked while the handler slept"

    asyncio.run(scenario())
    assert threads and all(name.startswith("eventbus-sync-handler") for name in threads)


def test_a_sync_handler_failure_is_retried_and_dead_lettered_like_an_async_one() -> None:
    bus = EventBus(
        memory_url(), retry=without_delays(RetryPolicy(max_attempts=2, in_process_attempts=2))
    )

    @bus.subscribe(OrderPlaced, group="g")
    def fail(event: OrderPlaced) -> None:
        raise ValueError(f"cannot {event.order_id}")

    async def scenario() -> None:
        async with TestBus(bus) as tb:
            await tb.bus.publish(OrderPlaced(order_id="x"))
            await tb.drain()
            assert [call.attempt for call in tb.calls(fail)] == [1, 2]
            (letter,) = tb.dead_lettered()
            assert letter.reason == "ValueError: cannot x"

    asyncio.run(scenario())


def test_a_sync_command_handler_replies() -> None:
    bus = EventBus(memory_url())

    @bus.subscribe(ChargeCard)
    def charge(command: ChargeCard) -> str:
        return f"charged {command.order_id}"

    async def scenario() -> None:
        async with bus:
            assert await bus.request(ChargeCard(order_id="7"), timeout=5) == "charged 7"

    asyncio.run(scenario())


def test_call_handler_runs_a_sync_handler_too() -> None:
    def charge(event: OrderPlaced, ctx: SyncContext) -> None:
        ctx.publish(PaymentTaken(order_id=event.order_id))

    async def scenario() -> None:
        published = await call_handler(charge, OrderPlaced(order_id="2"))
        assert published == [PaymentTaken(order_id="2")]

    asyncio.run(scenario())


def test_what_cannot_run_in_a_thread_is_refused() -> None:
    bus = EventBus(memory_url())

    def generator(event: OrderPlaced):  # type: ignore[no-untyped-def]
        yield event

    async def agen(event: OrderPlaced):  # type: ignore[no-untyped-def]
        yield event

    for fn in (generator, agen):
        with pytest.raises(UsageError, match="generator"):
            bus.subscribe(OrderPlaced, group=fn.__name__)(fn)
    with pytest.raises(UsageError, match="not callable"):
        bus.subscribe(OrderPlaced)(42)  # type: ignore[type-var]
    assert bus.subscriptions == []


def test_a_sync_function_returning_a_coroutine_is_an_error_not_a_lost_await() -> None:
    bus = EventBus(memory_url(), retry=without_delays(RetryPolicy(max_attempts=1)))

    async def work(event: OrderPlaced) -> None: ...

    @bus.subscribe(OrderPlaced, group="g")
    def handler(event: OrderPlaced):  # type: ignore[no-untyped-def]
        return work(event)

    async def scenario() -> None:
        async with TestBus(bus) as tb:
            await tb.bus.publish(OrderPlaced(order_id="1"))
            await tb.drain()
            (letter,) = tb.dead_lettered()
            assert "returned a coroutine" in letter.reason and "async def" in letter.reason

    asyncio.run(scenario())


def test_a_sync_batch_handler_gets_its_events_and_a_context_each() -> None:
    bus = EventBus(memory_url())
    batches: list[list[str]] = []

    @bus.subscribe(OrderPlaced, group="batch", batch=10, batch_timeout=0.05)
    def charge_all(events: list[OrderPlaced], contexts: list[SyncContext]) -> None:
        batches.append([e.order_id for e in events])
        for event, ctx in zip(events, contexts, strict=True):
            ctx.publish(PaymentTaken(order_id=event.order_id))

    async def scenario() -> None:
        async with TestBus(bus) as tb:
            await tb.bus.publish_many([OrderPlaced(order_id=str(n)) for n in range(3)])
            await tb.drain()
            assert sorted(p.order_id for p in tb.published(PaymentTaken)) == ["0", "1", "2"]

    asyncio.run(scenario())
    assert sorted(order for batch in batches for order in batch) == ["0", "1", "2"]


def test_the_pool_size_is_configurable_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from eventbus._sync_handlers import THREADS_VARIABLE, worker_threads

    monkeypatch.setenv(THREADS_VARIABLE, "3")
    assert worker_threads() == 3
    monkeypatch.setenv(THREADS_VARIABLE, "none")
    with pytest.raises(UsageError, match="positive number of threads"):
        worker_threads()
    monkeypatch.delenv(THREADS_VARIABLE)
    assert 1 <= worker_threads() <= 32


def test_a_timeout_gives_up_on_a_sync_handler_whose_thread_runs_on() -> None:
    """As the guide says: the run counts as timed out (dead-lettered here), while its
    thread cannot be stopped and finishes the call by itself."""
    bus = EventBus(memory_url(), retry=without_delays(RetryPolicy(max_attempts=1)))
    finished = threading.Event()

    @bus.subscribe(OrderPlaced, group="slow", timeout=0.05)
    def slow(event: OrderPlaced) -> None:
        time.sleep(0.5)
        finished.set()

    async def scenario() -> None:
        async with TestBus(bus) as tb:
            await tb.bus.publish(OrderPlaced(order_id="1"))
            await tb.drain()
            (letter,) = tb.dead_lettered()
            assert "HandlerTimeoutError" in letter.exception
            assert not finished.is_set()  # given up on, still running

    asyncio.run(scenario())
    assert finished.wait(5)
