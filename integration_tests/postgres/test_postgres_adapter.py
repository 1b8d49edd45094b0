"""The postgres:// broker beyond the conformance suite, on the real server: consumers
in separate pools compete without duplicates and keep keys in order, NOTIFY wakes
them at once, the listening connection comes back after the server ends it, and the
URL's secrets never show."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from eventbus_postgres import PostgresAdapter

from eventbus.adapter import Delivery, SubscribeOptions
from eventbus.envelope import Envelope
from eventbus.errors import (
    BrokerConnectionError,
    ConfigurationError,
    InvalidURLError,
    is_permanent_refusal,
)
from eventbus.registry_adapters import adapter_from_url
from eventbus.testing.faultproxy import FaultProxy

pytestmark = pytest.mark.asyncio


def _event(n: int, key: str | None = None) -> Envelope:
    return Envelope.create(type="test.job", source="tests", data=str(n).encode(), partitionkey=key)


async def _adapter(url: str, name: str, options: str = "") -> PostgresAdapter:
    # A different application_name is a different hub: its own pool and listener, as
    # another process (or machine) would have.
    adapter = PostgresAdapter(f"{url}?application_name={name}&lease=5{options}")
    await adapter.connect()
    return adapter


async def test_consumers_in_separate_pools_compete_once_and_keep_key_order(
    postgres_url: str,
) -> None:
    adapters = [await _adapter(postgres_url, f"member{i}") for i in range(3)]
    got: list[Delivery] = []
    all_in = asyncio.Event()

    async def consume(adapter: PostgresAdapter) -> None:
        subscription = await adapter.subscribe(
            "jobs", SubscribeOptions("workers", prefetch=8, start_from="earliest")
        )
        async for delivery in subscription:
            got.append(delivery)
            await asyncio.sleep(0.002)
            await delivery.ack()
            if len(got) >= 300:
                all_in.set()

    tasks = [asyncio.create_task(consume(a)) for a in adapters]
    try:
        keys = [f"k{i}" for i in range(5)]
        await adapters[0].publish("jobs", [_event(n, keys[n % 5]) for n in range(300)])
        await asyncio.wait_for(all_in.wait(), 30)
        await asyncio.sleep(0.3)  # a duplicate would arrive within this
        numbers = [int(d.envelope.data) for d in got if d.envelope]
        assert Counter(numbers) == Counter(range(300)), "lost or duplicated within a group"
        for key in keys:
            mine = [
                int(d.envelope.data) for d in got if d.envelope and d.envelope.partitionkey == key
            ]
            assert mine == sorted(mine), f"{key} out of order: {mine[:10]}"
    finally:
        for task in tasks:
            task.cancel()
        for adapter in adapters:
            await adapter.close()


async def test_notify_wakes_another_process_at_once(postgres_url: str) -> None:
    """With the safety poll set to a minute, a message published through another pool
    arrives within a fraction of a second: LISTEN/NOTIFY woke the consumer."""
    consumer = await _adapter(postgres_url, "consumer", "&idle_poll=60")
    producer = await _adapter(postgres_url, "producer")
    try:
        subscription = await consumer.subscribe("t", SubscribeOptions("g"))
        iterator = subscription.__aiter__()
        waiting = asyncio.ensure_future(iterator.__anext__())
        await asyncio.sleep(0.3)  # the consumer is idle, waiting
        started = time.monotonic()
        await producer.publish("t", [_event(1)])
        delivery = await asyncio.wait_for(waiting, 5.0)
        assert time.monotonic() - started < 1.0
        await delivery.ack()
    finally:
        await consumer.close()
        await producer.close()


async def test_listening_connection_comes_back_after_the_server_ends_it(postgres_url: str) -> None:
    consumer = await _adapter(postgres_url, "listener", "&idle_poll=60&ping_interval=0.5")
    producer = await _adapter(postgres_url, "sender")
    admin = await asyncpg.connect(postgres_url)
    try:
        subscription = await consumer.subscribe("t", SubscribeOptions("g"))
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'listener' AND query LIKE 'LISTEN%'"
        )
        for _ in range(50):  # noticed (termination or ping) and listening again
            await asyncio.sleep(0.1)
            if (await consumer.health()).ok:
                break
        iterator = subscription.__aiter__()
        waiting = asyncio.ensure_future(iterator.__anext__())
        await asyncio.sleep(0.3)
        await producer.publish("t", [_event(2)])
        delivery = await asyncio.wait_for(waiting, 5.0)
        await delivery.ack()
    finally:
        await admin.close()
        await consumer.close()
        await producer.close()


async def test_secrets_never_show(postgres_url: str) -> None:
    url = "postgresql://app:s3cr3t-pw@127.0.0.1:1/db?sslpassword=k3y-pw&sslmode=require"
    adapter = adapter_from_url(url)
    assert isinstance(adapter, PostgresAdapter)
    assert "s3cr3t" not in repr(adapter.settings) and "k3y-pw" not in repr(adapter.settings)
    with pytest.raises(BrokerConnectionError) as error:
        await adapter.connect()
    assert "s3cr3t" not in str(error.value) and "k3y-pw" not in str(error.value)
    with pytest.raises(InvalidURLError) as bad:
        adapter_from_url("postgresql://app:s3cr3t-pw@h/db?sslmode=sometimes")
    assert "sslmode" in str(bad.value) and "s3cr3t" not in str(bad.value)
    with pytest.raises(InvalidURLError, match="search_path"):
        adapter_from_url("postgresql://h/db?search_path=x")  # asyncpg would take it silently


async def test_close_ends_while_the_server_does_not_answer(postgres_url: str) -> None:
    """close() reaches the end with the path frozen (subscriptions, acks, the pool, the
    listener): every step is bounded."""
    parts = urlsplit(postgres_url)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5432).start()
    try:
        netloc = f"{parts.netloc.rsplit('@', 1)[0]}@127.0.0.1:{proxy.port}"
        url = urlunsplit(parts._replace(netloc=netloc))
        adapter = PostgresAdapter(f"{url}?ping_timeout=1&command_timeout=2&connect_timeout=2")
        await adapter.connect()
        subscription = await adapter.subscribe("t", SubscribeOptions("g"))
        await adapter.publish("t", [_event(1)])
        delivery = await asyncio.wait_for(subscription.__aiter__().__anext__(), 5)
        await delivery.ack()
        await proxy.freeze()
        started = time.monotonic()
        await asyncio.wait_for(adapter.close(), 60)
        assert time.monotonic() - started < 30, "close() waited on a dead path too long"
    finally:
        await proxy.thaw()
        proxy.stop()


async def test_statement_refusals_are_permanent(postgres_url: str) -> None:
    """Text PostgreSQL cannot store (a NUL in a topic name) is refused for good at once,
    not retried as an outage."""
    adapter = await _adapter(postgres_url, "refusal")
    try:
        with pytest.raises(ConfigurationError, match="topic"):
            await adapter.publish("bad\x00topic", [_event(1)])
        assert is_permanent_refusal(ConfigurationError("x"))
    finally:
        await adapter.close()


async def test_malformed_urls_never_show_the_password() -> None:
    for url in (
        "postgresql://app:s3cr3t-pw@db:notaport/shop",
        "postgresql://app:s3cr3t-pw@db:5432/shop?pool_size=0",
    ):
        with pytest.raises(InvalidURLError) as error:
            adapter_from_url(url)
        assert "s3cr3t" not in str(error.value) and "\n" not in str(error.value)
