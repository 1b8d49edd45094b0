"""Redis failure paths through an EventBus with handlers (issue #18)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

from eventbus_redis.consumer import delay_key
from redis.asyncio import Redis

from eventbus import Context, EventBus
from eventbus.middleware.retry import RetryPolicy
from eventbus.testing.conformance import Ping, on_topic
from eventbus.testing.faultproxy import FaultProxy


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 90) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))


def name(kind: str) -> str:
    return f"test-redis-fail-{kind}-{uuid.uuid4().hex[:8]}"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Seconds until ``check()`` held (polled); fails after ``within`` seconds."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within:g}s: {what}")


# -- #18 defect 8: a nack that fails lets the entry go ------------------------------------


def test_a_failed_nack_lets_the_entry_go_and_frees_its_prefetch_slot(redis_url: str) -> None:
    """The handler fails while Redis is unreachable for longer than redis-py's retries
    (~7 s), so the nack's ZADD fails. The entry must come back once Redis does (reclaimed
    after claim_idle_ms), and with one prefetch slot a later message is handled too."""

    async def scenario() -> None:
        proxy = FaultProxy("127.0.0.1", port_of(redis_url)).start()
        topic = name("nack")
        event = on_topic(Ping, topic)
        url = (f"redis+streams://127.0.0.1:{proxy.port}/0"
               "?claim_idle_ms=1000&claim_interval_ms=200&block_ms=200")
        bus = EventBus.from_url(url, source="tests", prefetch_per_worker=1,
                                retry=RetryPolicy(max_attempts=5, in_process_attempts=1,
                                                  initial_delay=0.1, max_delay=0.1))
        runs: list[int] = []
        handled: list[int] = []
        started = asyncio.Event()

        @bus.subscribe(event, group="g")
        async def handle(ping: Ping, ctx: Context) -> None:
            if ping.seq == 1:
                runs.append(ctx.attempt)
                if len(runs) == 1:
                    started.set()
                    await asyncio.sleep(0.5)
                    raise RuntimeError("the first run fails")
            handled.append(ping.seq)

        raw = Redis.from_url(redis_url)
        try:
            async with bus:
                await bus.publish(event(seq=1))
                await asyncio.wait_for(started.wait(), 10)
                await proxy.refuse_connections(9.0)  # the nack fails after its retries
                await asyncio.sleep(9.5)
                await bus.publish(event(seq=2))

                async def both() -> bool:
                    return sorted(handled) == [1, 2]

                await eventually(both, 15, f"redelivered and the next one handled "
                                 f"(runs={runs}, handled={handled})")
                assert runs[-1] >= 2  # the delivery count from the reclaim
        finally:
            await raw.delete(topic, delay_key(topic, "g"))
            await raw.aclose()
            proxy.stop()

    run(scenario)
