"""Our own stores as targets of the public store suites (eventbus.testing.patterns),
and a store by URL for the tests that are not part of a suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from eventbus.patterns.eventsourcing import EventStore, MemoryEventStore, SQLEventStore
from eventbus.patterns.sql import Database
from eventbus.testing.patterns import EventStoreTarget, OutboxTarget


def event_store_target(url: str) -> EventStoreTarget:
    """``memory://`` (one store per target, every handle the same object) or a
    database URL (every handle its own connection)."""
    if url == "memory://":
        store = MemoryEventStore()

        async def same() -> EventStore:
            return store

        return EventStoreTarget("memory", same)

    async def connect() -> EventStore:
        return await SQLEventStore.connect(url)

    return EventStoreTarget(url.split(":", 1)[0], connect)


def outbox_target(url: str) -> OutboxTarget:
    async def connect() -> Database:
        return await Database.connect(url)

    return OutboxTarget(url.split(":", 1)[0], connect)


@asynccontextmanager
async def open_store(url: str) -> AsyncIterator[EventStore]:
    """A store set up at ``url`` (``memory://`` for the in-memory one), closed after."""
    store: EventStore = (
        MemoryEventStore() if url == "memory://" else (await SQLEventStore.connect(url))
    )
    await store.setup()
    try:
        yield store
    finally:
        await store.close()
