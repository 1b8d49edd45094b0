"""The public event store suite (eventbus.testing.patterns.EventStoreSuite) on the memory
and SQLite stores; PostgreSQL: integration_tests/patterns/test_store_suites_postgres.py."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from eventbus.envelope import Envelope
from eventbus.patterns.eventsourcing import EventStore, MemoryEventStore, StoredEvent
from eventbus.testing.patterns import EventStoreSuite, EventStoreTarget
from tests.patterns.stores import event_store_target as target_at


@pytest.fixture(params=["memory", "sqlite"])
def event_store_target(request: pytest.FixtureRequest, tmp_path: Path) -> EventStoreTarget:
    return target_at("memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/es.db")


class TestEventStore(EventStoreSuite):
    """Every case of the event store contract, on the memory and SQLite stores."""


def test_the_suite_fails_a_store_that_lets_two_writers_win() -> None:
    """A third-party store that ignores the expected version is caught by the suite."""

    class Careless(MemoryEventStore):
        async def append(
            self, stream_id: str, events: Sequence[Envelope], expected_version: int | None
        ) -> list[StoredEvent]:
            return await super().append(stream_id, events, None)

    careless = Careless()

    async def connect() -> EventStore:
        return careless

    with pytest.raises(AssertionError):
        TestEventStore().test_concurrent_appends_conflict(EventStoreTarget("careless", connect))
