"""Redis failure paths through an EventBus with handlers (issue #18): a settle that
fails, connections that go silent without closing."""

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


# -- #18 defect 9: connections that go silent without closing -----------------------------


def test_a_silent_pubsub_connection_is_noticed_and_replaced(redis_url: str) -> None:
    """The subscriber's path freezes (TCP up, nothing forwarded): within the declared
    bound its subscription is reported not running, and after the thaw it hears what is
    published again."""

    async def scenario() -> None:
        proxy = FaultProxy("127.0.0.1", port_of(redis_url)).start()
        topic = name("silent")
        event = on_topic(Ping, topic)
        consumer = EventBus.from_url(
            f"redis://127.0.0.1:{proxy.port}/0?ping_interval=1&ping_timeout=1"
            "&connect_timeout=1", source="tests")
        publisher = EventBus.from_url(redis_url, source="tests")  # straight to Redis
        got: list[int] = []

        @consumer.subscribe(event, group="g")
        async def handle(ping: Ping) -> None:
            got.append(ping.seq)

        try:
            async with consumer, publisher:
                bound = consumer.adapter.capabilities.half_open_bound
                assert bound is not None and bound <= 3.0
                await publisher.publish(event(seq=0))

                async def first() -> bool:
                    return got == [0]

                await eventually(first, 10, "the first message")
                await proxy.freeze()

                async def noticed() -> bool:
                    # The subscription itself, not only the adapter's fresh-connection PING.
                    health = await consumer.health()
                    return not health.ok and health.subscriptions[0].state != "running"

                took = await eventually(noticed, bound + 3.0, "the silent connection noticed")
                assert took <= bound + 3.0
                await proxy.thaw()
                for seq in range(1, 100):  # until the new subscription hears one
                    await publisher.publish(event(seq=seq))
                    await asyncio.sleep(0.2)
                    if len(got) > 1:
                        break
                assert len(got) > 1, "nothing heard after the thaw"
                assert (await consumer.health()).ok
        finally:
            proxy.stop()

    run(scenario)


def test_a_streams_read_on_a_silent_connection_does_not_hang(
    streams_url: str, redis_url: str
) -> None:
    """The consumer's link stops forwarding (new links are fine): its blocking read is
    given up after ``read_timeout`` and made on a new connection, so an entry written
    meanwhile is handled within the declared bound."""

    async def scenario() -> None:
        proxy = FaultProxy("127.0.0.1", port_of(redis_url)).start()
        topic = name("silent-read")
        event = on_topic(Ping, topic)
        consumer = EventBus.from_url(
            f"redis+streams://127.0.0.1:{proxy.port}/0?block_ms=200&socket_timeout=1",
            source="tests")
        publisher = EventBus.from_url(streams_url, source="tests")
        got: list[int] = []

        @consumer.subscribe(event, group="g")
        async def handle(ping: Ping) -> None:
            got.append(ping.seq)

        raw = Redis.from_url(redis_url)
        try:
            async with consumer, publisher:
                bound = consumer.adapter.capabilities.half_open_bound
                assert bound is not None and bound <= 6.0
                await proxy.set_latency(3600)  # the next chunk on each open link waits
                await asyncio.sleep(0.5)
                await proxy.set_latency(0)  # new links are fine
                await publisher.publish(event(seq=1))

                async def handled() -> bool:
                    return got == [1]

                await eventually(handled, bound + 3.0, "the entry read on a new connection")
        finally:
            proxy.stop()
            await raw.delete(topic)
            await raw.aclose()

    run(scenario)
