"""The public store suites (eventbus.testing.patterns) on PostgreSQL, a fresh database per
test: the event store, and the outbox with its relay and the inbox."""

from __future__ import annotations

import pytest

from eventbus.testing.patterns import EventStoreSuite, EventStoreTarget, OutboxSuite, OutboxTarget
from tests.patterns.stores import event_store_target as event_store_at
from tests.patterns.stores import outbox_target as outbox_at

pytestmark = pytest.mark.broker("postgres")


@pytest.fixture
def event_store_target(postgres_url: str) -> EventStoreTarget:
    return event_store_at(postgres_url)


@pytest.fixture
def outbox_target(postgres_url: str) -> OutboxTarget:
    return outbox_at(postgres_url)


class TestPostgresEventStore(EventStoreSuite):
    """Every case of the event store contract on PostgreSQL."""


class TestPostgresOutbox(OutboxSuite):
    """Every outbox, relay and inbox case on PostgreSQL."""
