"""subscribe() options: idempotency inside the dead-letter step, conflicting options and
late subscriptions refused, and the bus closing the stores it was given."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import eventbus
from eventbus import (
    ConfigurationError,
    Context,
    Event,
    EventBus,
    Idempotency,
    MemoryIdempotencyStore,
    RetryPolicy,
)
from tests.bus_support import Collector, dead_letters, memory_url, run


class Job(Event, type="test.options.job", topic="test-options-jobs"):
    n: int


class Other(Event, type="test.options.other", topic="test-options-jobs"):
    n: int


def test_subscription_idempotency_runs_inside_dead_letter_so_a_replay_runs() -> None:
    """A dead-lettered message is not remembered as handled: replaying it runs again."""

    async def scenario() -> None:
        url = memory_url()
        bus = EventBus(url, retry=RetryPolicy(max_attempts=1))
        runs: Collector[str] = Collector()
        broken = True

        @bus.subscribe(Job, group="g", idempotency=MemoryIdempotencyStore())
        async def handle(event: Job, ctx: Context) -> None:
            runs.add(ctx.envelope.id)
            if broken:
                raise RuntimeError("bug, fixed later")

        async with bus:
            sent = await bus.publish(Job(n=1))
            (dead,) = await dead_letters(url, "test-options-jobs", "g", 1)
            broken = False
            await bus.publish_envelopes("test-options-jobs", [sent])  # the replay
            assert await runs.wait_count(2) == [sent.id, sent.id]
        assert dead.id == sent.id

    run(scenario)


def test_idempotency_in_a_middleware_list_is_refused_with_the_alternative() -> None:
    bus = EventBus(memory_url())
    with pytest.raises(ConfigurationError, match="idempotency="):
        bus.subscribe(Job, group="g", middleware=[Idempotency(MemoryIdempotencyStore())])
    with pytest.raises(ConfigurationError, match="dead-letter"):
        EventBus(memory_url(), middleware=[Idempotency(MemoryIdempotencyStore())])


def test_a_configured_idempotency_step_may_be_given_instead_of_a_store() -> None:
    async def scenario() -> None:
        store = MemoryIdempotencyStore()
        bus = EventBus(memory_url())
        runs: Collector[int] = Collector()

        @bus.subscribe(Job, group="g", idempotency=Idempotency(store, ttl=60.0))
        async def handle(event: Job) -> None:
            runs.add(event.n)

        async with bus:
            sent = await bus.publish(Job(n=1))
            await bus.publish_envelopes("test-options-jobs", [sent])  # a duplicate
            await bus.publish(Job(n=2))
            assert await runs.wait_count(2) == [1, 2]  # one lane: the duplicate came between

    run(scenario)


def test_subscribing_again_with_different_options_is_refused() -> None:
    bus = EventBus(memory_url())

    @bus.subscribe(Job, group="g")
    async def on_job(event: Job) -> None: ...

    async def on_other(event: Other) -> None: ...

    with pytest.raises(ConfigurationError) as info:
        bus.subscribe(Other, group="g", concurrency=8, delivery="at_most_once")(on_other)
    message = str(info.value)
    assert "test-options-jobs" in message and "'g'" in message
    assert "concurrency=8" in message and "delivery='at_most_once'" in message
    assert "timeout" not in message  # only the options that differ are named
    bus.subscribe(Other, group="g")(on_other)  # same options: fine
    assert len(bus.subscriptions) == 1


def test_subscribing_after_start_is_refused() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url())
        async with bus:
            with pytest.raises(ConfigurationError, match="after start"):

                @bus.subscribe(Job, group="g")
                async def late(event: Job) -> None: ...

        # A decorator made before start() and applied after it is refused too.
        bus = EventBus(memory_url())
        decorator = bus.subscribe(Job, group="g")
        async with bus:

            async def late_too(event: Job) -> None: ...

            with pytest.raises(ConfigurationError, match="after start"):
                decorator(late_too)
        assert bus.subscriptions == []

    run(scenario)


def test_a_refused_handler_leaves_no_subscription_behind() -> None:
    bus = EventBus(memory_url())

    def yields(event: Job):  # type: ignore[no-untyped-def]
        yield event

    with pytest.raises(TypeError, match="generator"):
        bus.subscribe(Job, group="g")(yields)
    assert bus.subscriptions == []


def test_stop_closes_the_idempotency_stores_the_bus_was_given() -> None:
    class ClosableStore(MemoryIdempotencyStore):
        def __init__(self) -> None:
            super().__init__()
            self.closed = 0

        async def close(self) -> None:
            self.closed += 1

    async def scenario() -> None:
        shared, own = ClosableStore(), ClosableStore()
        bus = EventBus(memory_url(), idempotency=shared)

        @bus.subscribe(Job, group="g", idempotency=own)
        async def handle(event: Job) -> None: ...

        @bus.subscribe(Job, group="h")
        async def other(event: Job) -> None: ...

        async with bus:
            pass
        assert (shared.closed, own.closed) == (1, 1)

    run(scenario)


def test_a_process_using_the_sqlite_store_exits_after_the_bus_stops(tmp_path: Path) -> None:
    script = tmp_path / "svc.py"
    script.write_text(
        textwrap.dedent(f"""
        import asyncio
        from eventbus import Event, EventBus, SQLiteIdempotencyStore

        class Job(Event, type="test.options.exit", topic="test-options-exit"):
            n: int

        async def main() -> None:
            store = SQLiteIdempotencyStore({str(tmp_path / "ids.db")!r})
            bus = EventBus("memory://exit", idempotency=store)
            done = asyncio.Event()

            @bus.subscribe(Job, group="g")
            async def handle(event: Job) -> None:
                done.set()

            async with bus:
                await bus.publish(Job(n=1))
                await asyncio.wait_for(done.wait(), 10)

        asyncio.run(main())
        print("returned", flush=True)
    """)
    )
    package_root = Path(eventbus.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert "returned" in out, err
    assert proc.returncode == 0, err
