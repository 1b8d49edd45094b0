"""Redis failure paths through an EventBus with handlers (issue #18): a settle that
fails, connections that go silent without closing, a group or stream deleted
underneath, and what ``backlog()`` counts for the stall watch."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest
from eventbus_redis import RedisStreamsAdapter
from eventbus_redis.consumer import delay_key
from eventbus_redis.group_route import route_key
from redis.asyncio import Redis

from eventbus import Context, EventBus
from eventbus.adapter import SubscribeOptions
from eventbus.errors import TopicNotFoundError
from eventbus.middleware.retry import RetryPolicy
from eventbus.testing.conformance import Ping, on_topic
from eventbus.testing.faultproxy import FaultProxy


def run(scenario: Callable[[], Awaitable[None]], timeout: float = 90) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))


def name(kind: str) -> str:
    return f"test-redis-fail-{kind}-{uuid.uuid4().hex[:8]}"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float, what: str | Callable[[], str]
) -> float:
    """Seconds until ``check()`` held (polled); fails after ``within`` seconds saying
    ``what`` (called then, if a function, to show the state at the end)."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {within:g}s: {what if isinstance(what, str) else what()}")


# -- #18 defect 8: a nack that fails lets the entry go ------------------------------------


def test_a_failed_nack_lets_the_entry_go_and_frees_its_prefetch_slot(redis_url: str) -> None:
    """The handler fails while Redis is unreachable for longer than redis-py's retries
    (~7 s), so the nack's ZADD fails. The entry must come back once Redis does (reclaimed
    after claim_idle), and with one prefetch slot a later message is handled too."""

    async def scenario() -> None:
        proxy = FaultProxy("127.0.0.1", port_of(redis_url)).start()
        topic = name("nack")
        event = on_topic(Ping, topic)
        url = f"redis+streams://127.0.0.1:{proxy.port}/0?claim_idle=1&claim_interval=0.2&block=0.2"
        bus = EventBus.from_url(
            url,
            source="tests",
            prefetch_per_worker=1,
            retry=RetryPolicy(
                max_attempts=5, in_process_attempts=1, initial_delay=0.1, max_delay=0.1
            ),
        )
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

                await eventually(
                    both,
                    15,
                    lambda: (
                        f"redelivered and the next one handled (runs={runs}, handled={handled})"
                    ),
                )
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
            f"redis://127.0.0.1:{proxy.port}/0?ping_interval=1&ping_timeout=1&connect_timeout=1",
            source="tests",
        )
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
            f"redis+streams://127.0.0.1:{proxy.port}/0?block=0.2&socket_timeout=1", source="tests"
        )
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


# -- a group or stream deleted underneath --------------------------------------------------


@pytest.mark.parametrize("deletion", ["group", "stream"])
def test_a_group_deleted_underneath_is_created_again_where_it_was(
    deletion: str, streams_url: str, redis_url: str
) -> None:
    """XGROUP DESTROY (or DEL of the stream) while subscribed: what is published
    afterwards is handled, once, and what was handled before is not handed out again."""

    async def scenario() -> None:
        topic = name(f"deleted-{deletion}")
        event = on_topic(Ping, topic)
        bus = EventBus.from_url(f"{streams_url}?block=0.2", source="tests")
        got: list[int] = []

        @bus.subscribe(event, group="g")
        async def handle(ping: Ping) -> None:
            got.append(ping.seq)

        raw = Redis.from_url(redis_url)
        try:
            async with bus:
                await bus.publish_many([event(seq=n) for n in range(3)])

                async def first() -> bool:
                    return sorted(got) == [0, 1, 2]

                await eventually(first, 10, lambda: f"the first three ({got})")
                if deletion == "group":
                    assert await raw.xgroup_destroy(topic, "g")
                else:
                    assert await raw.delete(topic)
                await bus.publish_many([event(seq=n) for n in range(3, 8)])

                async def rest() -> bool:
                    return sorted(got) == list(range(8))

                await eventually(rest, 15, lambda: f"the five published afterwards ({got})")
                await asyncio.sleep(1.0)  # nothing more comes (no replay of 0..2)
                assert sorted(got) == list(range(8))
                assert (await bus.health()).ok
        finally:
            await raw.delete(topic)
            await raw.aclose()

    run(scenario)


# -- backlog() ---------------------------------------------------------------------------


def test_backlog_counts_what_the_group_could_be_given_now(streams_url: str, redis_url: str) -> None:
    """Undelivered entries (lag), pending entries idle past claim_idle, due delayed
    retries; not entries held by a live consumer nor delayed retries still waiting.
    A deleted group raises TopicNotFoundError."""

    async def scenario() -> None:
        topic = name("backlog")
        adapter = RedisStreamsAdapter(f"{streams_url}?claim_idle=0.3")
        raw = Redis.from_url(redis_url)
        await adapter.connect()
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group="g"))
            assert await subscription.backlog() == 0
            # Its consumers stop reading: what arrives now is lag.
            for source in (subscription.main, subscription.route):  # type: ignore[attr-defined]
                await source.close()
            for n in range(3):
                await raw.xadd(topic, {"n": str(n)})
            assert await subscription.backlog() == 3
            # A consumer takes one and dies: pending, reclaimable once idle.
            taken = await raw.xreadgroup("g", "dead", {topic: ">"}, count=1)
            entry_id = taken[0][1][0][0]
            assert await subscription.backlog() == 2
            await asyncio.sleep(0.4)
            assert await subscription.backlog() == 3
            # Waiting out a nack delay: not now; once due: counted once.
            later = int(time.time() * 1000) + 60_000
            await raw.zadd(delay_key(topic, "g"), {entry_id: later})
            assert await subscription.backlog() == 2
            await raw.zadd(delay_key(topic, "g"), {entry_id: 0})
            assert await subscription.backlog() == 3
            await raw.xgroup_destroy(topic, "g")
            with pytest.raises(TopicNotFoundError, match="'g'"):
                await subscription.backlog()
        finally:
            await raw.delete(topic, delay_key(topic, "g"), route_key(topic, "g"))
            await raw.aclose()
            await adapter.close()

    run(scenario)
