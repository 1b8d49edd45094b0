"""The memory broker's retention bound (``max_messages``): the log keeps the newest
messages of each topic, so a long-running process does not grow without limit,
while groups that already exist still get every message."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest

from eventbus import Envelope, InvalidURLError, MemoryAdapter
from eventbus.adapter import SubscribeOptions
from eventbus.memory_broker import DEFAULT_MAX_MESSAGES

WAIT = 5.0


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 20))


def env(n: int) -> Envelope:
    return Envelope.create(type="t", source="s", data=b"{}", subject=str(n))


async def take(adapter: MemoryAdapter, topic: str, group: str, count: int,
               start_from: str = "latest") -> list[str | None]:
    subscription = await adapter.subscribe(
        topic, SubscribeOptions(group=group, prefetch=1000, start_from=start_from))  # type: ignore[arg-type]
    seen: list[str | None] = []
    iterator = subscription.__aiter__()
    for _ in range(count):
        delivery = await asyncio.wait_for(iterator.__anext__(), WAIT)
        seen.append(delivery.envelope.subject if delivery.envelope else None)
        await delivery.ack()
    return seen


def test_the_log_keeps_the_newest_max_messages() -> None:
    async def scenario() -> None:
        adapter = MemoryAdapter(f"memory://{uuid.uuid4()}?max_messages=3")
        topic = f"topic-{uuid.uuid4()}"
        await adapter.publish(topic, [env(1), env(2)])
        await adapter.publish(topic, [env(3), env(4), env(5)])
        read = await adapter.read(topic)
        assert [r.envelope.subject for r in read if r.envelope] == ["3", "4", "5"]
        # A group created now replays only what is retained: the oldest two are gone.
        assert await take(adapter, topic, "late", 3, "earliest") == ["3", "4", "5"]
        await adapter.close()

    run(scenario)


def test_groups_that_exist_get_every_message_beyond_the_bound() -> None:
    async def scenario() -> None:
        adapter = MemoryAdapter(f"memory://{uuid.uuid4()}?max_messages=2")
        topic = f"topic-{uuid.uuid4()}"
        subscription = await adapter.subscribe(topic, SubscribeOptions(group="early"))
        await adapter.publish(topic, [env(n) for n in range(1, 6)])
        iterator = subscription.__aiter__()
        seen = []
        for _ in range(5):
            delivery = await asyncio.wait_for(iterator.__anext__(), WAIT)
            seen.append(delivery.envelope.subject if delivery.envelope else None)
            await delivery.ack()
        assert seen == ["1", "2", "3", "4", "5"]
        assert len(await adapter.read(topic)) == 2
        await adapter.close()

    run(scenario)


def test_the_bound_has_a_default_and_refuses_nonsense() -> None:
    adapter = MemoryAdapter(f"memory://{uuid.uuid4()}")
    assert adapter.broker.max_messages == DEFAULT_MAX_MESSAGES == 100_000
    for value in ("0", "-1", "many"):
        with pytest.raises(InvalidURLError, match=r"max_messages=.* positive integer"):
            MemoryAdapter(f"memory://x?max_messages={value}")
