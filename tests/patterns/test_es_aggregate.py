"""Aggregate and repository rules that do not depend on the store (memory store)."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

import pytest

from eventbus import Event
from eventbus.errors import ConfigurationError
from eventbus.patterns.eventsourcing import MemoryEventStore, Repository
from eventbus.testing.patterns.event_store import Account, Deposited


class Frozen(Event, type="es-test.frozen"):
    reason: str


@pytest.mark.asyncio
async def test_an_event_without_an_applier_names_the_decorator_to_add() -> None:
    with pytest.raises(
        ConfigurationError,
        match=r"Account has no method for Frozen.*"
        r"@applies\(Frozen\)",
    ):
        Account("a").record(Frozen(reason="x"))


class AccountV2(Account):
    """The same stream, with a state whose shape changed: old snapshots are ignored."""

    snapshot_type: ClassVar[str] = "Account"
    snapshot_version: ClassVar[int] = 2


@pytest.mark.asyncio
async def test_snapshots_of_an_older_state_shape_are_ignored() -> None:
    store = MemoryEventStore()
    account = Account("a")
    account.open("ada")
    account.deposit(5)
    await Repository(store, Account, snapshot_every=2).save(account)
    assert (await store.load_snapshot("a")).schema == 1  # type: ignore[union-attr]
    Account.applied = 0
    loaded = await Repository(store, AccountV2, snapshot_every=2).load("a")
    assert (loaded.balance, Account.applied) == (5, 2)  # replayed, not restored


@pytest.mark.asyncio
async def test_state_that_is_not_json_cannot_be_snapshotted_silently() -> None:
    account = Account("a")
    account.balance = object()  # type: ignore[assignment]
    with pytest.raises(ConfigurationError, match="override snapshot_state"):
        account.snapshot_state()


@pytest.mark.asyncio
async def test_a_snapshot_interval_needs_a_store_that_keeps_them() -> None:
    class Bare:
        pass

    with pytest.raises(ConfigurationError, match="does not keep snapshots"):
        Repository(Bare(), Account, snapshot_every=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="snapshot_every"):
        Repository(MemoryEventStore(), Account, snapshot_every=0)


@pytest.mark.asyncio
async def test_a_naive_time_reads_as_utc() -> None:
    store = MemoryEventStore()
    account = Account("a")
    account.deposit(1)
    await Repository(store, Account).save(account)
    loaded = await Repository(store, Account).load("a", at=datetime(2999, 1, 1))
    assert loaded.balance == 1 and isinstance(Deposited(amount=1), Event)
