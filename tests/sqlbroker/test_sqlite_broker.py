"""The sqlite:// broker beyond the conformance suite: leases across consumers, per-key
holding, retention, routing, browsing, settings; each on a real SQLite file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from eventbus.adapter import Delivery, RawMessage, SubscribeOptions, Subscription
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError, InvalidURLError, TopicNotFoundError
from eventbus.patterns.sql import Database
from eventbus.registry_adapters import adapter_from_url
from eventbus.sqlbroker import SQLiteAdapter

pytestmark = pytest.mark.asyncio


def _event(n: int, key: str | None = None) -> Envelope:
    return Envelope.create(type="test.job", source="tests", data=b'{"n": %d}' % n, partitionkey=key)


def _n(delivery: Delivery) -> int:
    assert delivery.envelope is not None
    return int(delivery.envelope.data.split(b":")[1].strip(b" }"))


@pytest_asyncio.fixture
async def adapter(tmp_path: Path) -> AsyncIterator[SQLiteAdapter]:
    broker = SQLiteAdapter(f"sqlite:///{tmp_path / 'bus.db'}?lease=1")
    await broker.connect()
    yield broker
    await broker.close()


async def _next(subscription: Subscription, timeout: float = 5.0) -> Delivery:
    iterator = subscription.__aiter__()
    return await asyncio.wait_for(iterator.__anext__(), timeout)


async def test_crashed_consumers_messages_come_back_after_the_lease_counted(
    adapter: SQLiteAdapter,
) -> None:
    """A consumer that vanishes without closing (its process killed) keeps its lease
    until it ends; then another consumer of the group gets the message, attempt 2."""
    first = await adapter.subscribe("jobs", SubscribeOptions("g", start_from="earliest"))
    await adapter.publish("jobs", [_event(1)])
    held = await _next(first)
    assert held.attempt == 1
    first._keeper.cancel()  # type: ignore[attr-defined]  # as if the process died
    second = await adapter.subscribe("jobs", SubscribeOptions("g"))
    started = asyncio.get_running_loop().time()
    again = await _next(second, 10.0)
    assert _n(again) == 1 and again.attempt == 2
    assert asyncio.get_running_loop().time() - started >= 0.5, "taken before its lease ended"
    await again.ack()


async def test_a_key_is_held_across_consumers_until_settled(adapter: SQLiteAdapter) -> None:
    """Per-key order across competing consumers: while one consumer holds key K's message,
    no consumer of the group gets K's next one; other keys flow meanwhile."""
    one = await adapter.subscribe("orders", SubscribeOptions("g", prefetch=4))
    two = await adapter.subscribe("orders", SubscribeOptions("g", prefetch=4))
    await adapter.publish("orders", [_event(1, "K"), _event(2, "K"), _event(3, "L")])
    got: list[Delivery] = []

    async def pump(subscription: Subscription) -> None:
        async for delivery in subscription:
            got.append(delivery)

    tasks = [asyncio.create_task(pump(s)) for s in (one, two)]
    await asyncio.sleep(0.5)
    assert sorted(_n(d) for d in got) == [1, 3], "K's second message went out too early"
    await next(d for d in got if _n(d) == 1).ack()
    for _ in range(50):
        if len(got) == 3:
            break
        await asyncio.sleep(0.05)
    assert [_n(d) for d in got][-1] == 2
    for task in tasks:
        task.cancel()


async def test_nack_delay_holds_its_key_and_survives_the_consumer(adapter: SQLiteAdapter) -> None:
    """nack(delay) is stored in the row: the message comes back after the delay to any
    consumer of the group (this one closed meanwhile), before its key's next message."""
    first = await adapter.subscribe("t", SubscribeOptions("g", start_from="earliest"))
    await adapter.publish("t", [_event(1, "K"), _event(2, "K")])
    delivery = await _next(first)
    await delivery.nack(0.6)
    await first.close()
    second = await adapter.subscribe("t", SubscribeOptions("g"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    again = await _next(second)
    assert (_n(again), again.attempt) == (1, 2)
    assert loop.time() - started >= 0.4
    await again.ack()
    assert _n(await _next(second)) == 2


async def test_close_hands_back_what_never_reached_a_handler_uncounted(
    adapter: SQLiteAdapter,
) -> None:
    """Messages fetched into the buffer but never handed out go back at close without
    their delivery being counted (a resubscribing consumer must not look like a crash)."""
    first = await adapter.subscribe("t", SubscribeOptions("g", prefetch=8, start_from="earliest"))
    await adapter.publish("t", [_event(n) for n in range(4)])
    handed = await _next(first)
    await first.close()
    second = await adapter.subscribe("t", SubscribeOptions("g", prefetch=8))
    attempts = {}
    for _ in range(4):
        delivery = await _next(second)
        attempts[_n(delivery)] = delivery.attempt
        await delivery.ack()
    assert attempts == {_n(handed): 2, **{n: 1 for n in range(4) if n != _n(handed)}}


async def test_retention_by_count_keeps_what_a_group_holds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}?max_messages=3&retention_interval=0.1"
    adapter = SQLiteAdapter(url)
    await adapter.connect()
    try:
        holder = await adapter.subscribe("t", SubscribeOptions("g", start_from="earliest"))
        await adapter.publish("t", [_event(0)])
        held = await _next(holder)  # in flight: retention must keep it
        await adapter.publish("t", [_event(n) for n in range(1, 10)])
        for _ in range(50):
            if len(await adapter.read("t")) <= 4:
                break
            await asyncio.sleep(0.1)
        kept = [r.envelope.data for r in await adapter.read("t") if r.envelope]
        assert kept == [_event(n).data for n in (0, 7, 8, 9)], kept
        await held.ack()
    finally:
        await adapter.close()


async def test_retention_by_age(tmp_path: Path) -> None:
    adapter = SQLiteAdapter(f"sqlite:///{tmp_path / 'a.db'}?max_age=0.3&retention_interval=0.1")
    await adapter.connect()
    try:
        await adapter.publish("t", [_event(1)])
        await asyncio.sleep(0.2)
        await adapter.publish("t", [_event(2)])  # younger: outlives the first
        for _ in range(50):
            if len(await adapter.read("t")) == 1:
                break
            await asyncio.sleep(0.05)
        assert [r.envelope.data for r in await adapter.read("t") if r.envelope] == [_event(2).data]
    finally:
        await adapter.close()


async def test_publish_to_group_is_not_browsed_and_reaches_that_group(
    adapter: SQLiteAdapter,
) -> None:
    a = await adapter.subscribe("t", SubscribeOptions("a"))
    await adapter.subscribe("t", SubscribeOptions("b"))
    await adapter.publish_to_group("t", "a", [_event(5)])
    assert _n(await _next(a)) == 5
    assert await adapter.read("t") == []
    assert await (await adapter.subscribe("t", SubscribeOptions("b"))).backlog() == 0


async def test_read_creates_nothing(adapter: SQLiteAdapter) -> None:
    for _ in range(2):
        with pytest.raises(TopicNotFoundError, match="never"):
            await adapter.read("never")


async def test_backlog_counts_due_messages_not_held_keys(adapter: SQLiteAdapter) -> None:
    sub = await adapter.subscribe("t", SubscribeOptions("g", prefetch=1))
    await adapter.publish("t", [_event(1, "K"), _event(2, "K"), _event(3)])
    assert await sub.backlog() == 3  # new messages after the group's position
    first = await _next(sub)  # K#1 now leased: K#2 is held behind it
    assert await sub.backlog() == 1
    await first.ack()


async def test_foreign_headers_survive_byte_for_byte(adapter: SQLiteAdapter) -> None:
    sub = await adapter.subscribe("t", SubscribeOptions("g"))
    headers = {"x-binary": b"\xff\x00\xfe", "x-text": b"caf\xc3\xa9"}
    await adapter.publish_raw("t", RawMessage(b"\x00not a cloudevent", headers))
    delivery = await _next(sub)
    assert delivery.envelope is None and delivery.raw == b"\x00not a cloudevent"
    assert delivery.raw_headers == headers
    assert delivery.message_id


async def test_publish_inside_a_transaction_on_the_same_file_is_refused(tmp_path: Path) -> None:
    """One writer per file: a publish waiting on the task's own open transaction would
    wait for itself; it is refused at once."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    adapter = SQLiteAdapter(url)
    await adapter.connect()
    db = await Database.connect(url)
    try:
        async with db.transaction():
            with pytest.raises(ConfigurationError, match="outbox"):
                async with asyncio.timeout(5.0):  # in this task: wait_for would make another
                    await adapter.publish("t", [_event(1)])
    finally:
        await db.close()
        await adapter.close()


async def test_tables_are_recorded_for_db_migrate(adapter: SQLiteAdapter) -> None:
    from eventbus.patterns.migrations import migrate

    db = await Database.connect(adapter.settings.database_url)
    try:
        results = await migrate(db)
    finally:
        await db.close()
    assert [(r.table, r.kind, r.changed) for r in results] == [
        ("eventbus_messages", "message log", False)
    ]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sqlite://", "names no file"),
        ("sqlite://:memory:", "memory://"),
        ("sqlite:///x.db?lease=0.1", "lease='0.1'"),
        ("sqlite:///x.db?max_messages=0", "max_messages='0'"),
        ("sqlite:///x.db?poll=1", "unknown option 'poll'"),
        ("sqlite:///x.db?lease=1&lease=2", "lease"),
    ],
)
async def test_bad_urls_are_one_line_errors(url: str, words: str) -> None:
    with pytest.raises(InvalidURLError, match=words) as error:
        adapter_from_url(url)
    assert "\n" not in str(error.value)


async def test_relative_and_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = adapter_from_url("sqlite:///here.db")
    absolute = adapter_from_url(f"sqlite:///{tmp_path}/there.db")
    assert isinstance(relative, SQLiteAdapter) and isinstance(absolute, SQLiteAdapter)
    assert relative.settings.where.endswith(f"{tmp_path}/here.db")
    assert absolute.path == f"{tmp_path}/there.db"
