"""The relay publishes what the store recorded, at least once, in order, and a crash
between publish and checkpoint loses nothing (memory and SQLite stores)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from eventbus import Context, EventBus
from eventbus.backoff import Backoff
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError, MessageTooLargeError
from eventbus.middleware.base import PublishNext
from eventbus.middleware.idempotency import MemoryIdempotencyStore
from eventbus.patterns.eventsourcing import EventRelay, Repository
from eventbus.testing.patterns.event_store import Account, Deposited, Opened
from tests.patterns.stores import open_store


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/es.db"


class Wire:
    """Publish middleware: records every envelope that reached the broker and, while
    ``hang`` is "before" or "after", never returns from that point of a publish (the
    process dies right there)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.hang: str | None = None
        self.hung = asyncio.Event()

    async def __call__(
        self, topic: str, envelopes: Sequence[Envelope], call_next: PublishNext
    ) -> None:
        if self.hang == "before":
            self.hung.set()
            await asyncio.Event().wait()
        await call_next(topic, envelopes)
        self.sent += [e.id for e in envelopes]
        if self.hang == "after":
            self.hung.set()
            await asyncio.Event().wait()


@pytest.mark.asyncio
@pytest.mark.parametrize("killed", ["before", "after"])
async def test_a_killed_relay_loses_nothing(store_url: str, killed: str) -> None:
    """Killed (cancelled) before or after its publish, the relay has not advanced the
    checkpoint; the next one publishes from there: nothing lost, duplicates deduped."""
    wire = Wire()
    bus = EventBus(f"memory://relay-{uuid.uuid4().hex}", publish_middleware=[wire])
    handled: list[str] = []
    everything = asyncio.Event()

    @bus.subscribe(
        Opened,
        Deposited,
        group="ledger",
        start_from="earliest",
        idempotency=MemoryIdempotencyStore(),
    )
    async def ledger(event: Opened | Deposited, ctx: Context) -> None:
        if isinstance(event, Opened) and event.owner == "sentinel":
            everything.set()  # published after the relay's events: they were all handled
            return
        handled.append(ctx.envelope.id)

    async with open_store(store_url) as store, bus:
        account = Account("acc")
        account.open("ada")
        for amount in (1, 2, 3):
            account.deposit(amount)
        stored = await Repository(store, Account).save(account)
        more = Account("acc2")
        more.open("bo")
        more.deposit(9)
        stored += await Repository(store, Account).save(more)
        ids = [s.id for s in stored]

        wire.hang = killed
        first = EventRelay(store, bus, name="to-bus", batch=100)
        await first.start()
        await asyncio.wait_for(wire.hung.wait(), 5)
        await first.stop()  # killed before the checkpoint
        # One topic: one publish of the whole batch (or none when killed before it).
        sent_before = ids if killed == "after" else []
        assert wire.sent == sent_before
        assert await store.get_checkpoint("to-bus") == 0

        wire.hang = None
        async with EventRelay(store, bus, name="to-bus") as second:
            await second.wait_until(stored[-1].position, timeout=5)
            assert second.health().ok and second.health().checkpoint == 6
        assert await store.get_checkpoint("to-bus") == 6
        assert wire.sent == sent_before + ids  # republished: at least once, same ids, in order
        await bus.publish(Opened(owner="sentinel"))
        await asyncio.wait_for(everything.wait(), 5)
        assert sorted(handled) == sorted(ids)  # the idempotency middleware dropped repeats


@pytest.mark.asyncio
async def test_relay_retries_a_failed_publish_and_reports_it(store_url: str) -> None:
    failures = 2

    async def flaky(topic: str, envelopes: Sequence[Envelope], call_next: PublishNext) -> None:
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionError("broker away")
        await call_next(topic, envelopes)

    bus = EventBus(f"memory://relay-{uuid.uuid4().hex}", publish_middleware=[flaky])
    async with open_store(store_url) as store, bus:
        account = Account("a")
        account.open("cy")
        (stored,) = await Repository(store, Account).save(account)
        relay = EventRelay(store, bus, backoff=Backoff(initial=0.01, max_delay=0.01, jitter=0))
        async with relay:
            await relay.wait_until(stored.position, timeout=5)
        assert failures == 0 and relay.health().published == 1
        assert not relay.health().running
        assert relay.health().last_success is not None and relay.health().last_error is None


@pytest.mark.asyncio
async def test_relay_shows_a_failure_in_health(store_url: str) -> None:
    calls = 0
    retried = asyncio.Event()

    async def down(topic: str, envelopes: Sequence[Envelope], call_next: PublishNext) -> None:
        nonlocal calls
        calls += 1
        if calls >= 3:  # the background relay failed once and came back
            retried.set()
        raise ConnectionError("broker away")

    bus = EventBus(f"memory://relay-{uuid.uuid4().hex}", publish_middleware=[down])
    async with open_store(store_url) as store, bus:
        account = Account("a")
        account.open("cy")
        await Repository(store, Account).save(account)
        relay = EventRelay(
            store, bus, name="down", backoff=Backoff(initial=0.01, max_delay=0.01, jitter=0)
        )
        with pytest.raises(ConnectionError):
            await relay.run_once()
        async with relay:
            await asyncio.wait_for(retried.wait(), 5)
            assert not relay.health().ok and relay.health().running
            health = relay.health()
            assert "ConnectionError: broker away" in (health.last_error or "")
            assert health.state == "backing_off" and health.consecutive_failures >= 1
        assert await store.get_checkpoint("down") == 0
        assert relay.health().state == "stopped"


def test_both_relays_report_one_relay_health() -> None:
    from eventbus.patterns.eventsourcing import RelayHealth as EventRelayHealth
    from eventbus.patterns.outbox import RelayHealth as OutboxRelayHealth

    assert EventRelayHealth is OutboxRelayHealth


class Refuse:
    """Publish middleware: the broker refuses for good (too large) every event whose
    id is in ``ids``; records what it let through, in order."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.sent: list[str] = []

    async def __call__(
        self, topic: str, envelopes: Sequence[Envelope], call_next: PublishNext
    ) -> None:
        for envelope in envelopes:
            if envelope.id in self.ids:
                raise MessageTooLargeError(f"event {envelope.id} is too large")
        await call_next(topic, envelopes)
        self.sent += [e.id for e in envelopes]


@pytest.mark.asyncio
async def test_a_refused_event_is_parked_and_the_other_streams_flow(store_url: str) -> None:
    """Defect 10: an event the broker refuses for good no longer stops the relay for
    every stream. It is parked (health shows it), its stream's later events wait
    behind it (order kept), the other streams are published; the operator retries
    it once fixed, or skips it, and the held events follow in order."""
    refuse = Refuse()
    bus = EventBus(f"memory://relay-{uuid.uuid4().hex}", publish_middleware=[refuse])
    async with open_store(store_url) as store, bus:
        accounts = Repository(store, Account)
        bad = Account("bad")
        bad.open("big")
        bad.deposit(1)
        stored = await accounts.save(bad)  # positions 1 (refused), 2 (held)
        refuse.ids.add(stored[0].id)
        good = Account("good")
        good.open("small")
        stored += await accounts.save(good)  # position 3: another stream
        relay = EventRelay(
            store, bus, name="parking", backoff=Backoff(initial=0.01, max_delay=0.01, jitter=0)
        )
        async with relay:
            await relay.wait_until(stored[-1].position, timeout=5)
            health = relay.health()
            assert health.ok and health.parked == 2
        assert refuse.sent == [stored[2].id]
        parked = await relay.parked()
        assert [(p.position, p.held_by) for p in parked] == [(1, None), (2, 1)]
        assert "MessageTooLargeError" in parked[0].error
        with pytest.raises(ConfigurationError, match="waits behind position 1"):
            await relay.retry_parked(2)
        with pytest.raises(MessageTooLargeError):
            await relay.retry_parked(1)  # not fixed yet: still parked
        assert [p.position for p in await relay.parked()] == [1, 2]

        refuse.ids.clear()  # the cause is fixed
        assert await relay.retry_parked(1) == 2
        assert refuse.sent == [stored[2].id, stored[0].id, stored[1].id]
        assert await relay.parked() == [] and relay.health().parked == 0

        more = await accounts.load("good")
        more.deposit(5)
        skipped = await accounts.save(more)
        refuse.ids.add(skipped[0].id)
        await relay.run_once()
        after = await accounts.load("good")
        after.deposit(6)
        held = await accounts.save(after)
        await relay.run_once()  # a later batch: still held
        assert [p.position for p in await relay.parked()] == [4, 5]
        assert await relay.skip_parked(4) == 1  # dropped; the held one follows
        assert refuse.sent[-1] == held[0].id and skipped[0].id not in refuse.sent
        assert await relay.parked() == []
