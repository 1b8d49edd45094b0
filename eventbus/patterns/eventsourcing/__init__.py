"""Event sourcing: aggregates, a repository, event stores (memory, SQLite, PostgreSQL),
snapshots, and a relay that publishes stored events to the bus (parking an event
the broker refuses for good).

See ``docs/patterns/event-sourcing.md``.
"""

from eventbus.patterns.eventsourcing.aggregate import Aggregate, applies
from eventbus.patterns.eventsourcing.memory import MemoryEventStore
from eventbus.patterns.eventsourcing.parking import ParkedStoredEvent, ParkingStore
from eventbus.patterns.eventsourcing.relay import EventRelay
from eventbus.patterns.eventsourcing.repository import Repository
from eventbus.patterns.eventsourcing.snapshots import Snapshot, SnapshotStore
from eventbus.patterns.eventsourcing.sql_store import SQLEventStore
from eventbus.patterns.eventsourcing.store import (
    ConcurrencyError,
    DuplicateEventError,
    EventStore,
    StoredEvent,
    StreamNotFoundError,
    iter_all,
    iter_stream,
)
from eventbus.patterns.health import RelayHealth

__all__ = [
    "Aggregate",
    "ConcurrencyError",
    "DuplicateEventError",
    "EventRelay",
    "EventStore",
    "MemoryEventStore",
    "ParkedStoredEvent",
    "ParkingStore",
    "RelayHealth",
    "Repository",
    "SQLEventStore",
    "Snapshot",
    "SnapshotStore",
    "StoredEvent",
    "StreamNotFoundError",
    "applies",
    "iter_all",
    "iter_stream",
]
