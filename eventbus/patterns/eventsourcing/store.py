"""The event store's contract: what every store (memory, SQLite, PostgreSQL) does.

A stream is one aggregate's events, numbered 1, 2, 3... (its *version*). Every
event also gets a *global position*, increasing across all streams in the order
the appends committed, so a reader following ``read_all(after=position)`` sees
every event exactly once and never skips one that committed late.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Protocol, runtime_checkable

from eventbus.envelope import Envelope
from eventbus.errors import EventBusError
from eventbus.events import Message, Registry, registry


class ConcurrencyError(EventBusError):
    """An append's ``expected_version`` is not the stream's version any more.

    Someone else appended to the stream first. Load the aggregate again, re-run
    the command on the fresh state and save again.
    """

    def __init__(self, stream_id: str, expected_version: int | None, actual_version: int) -> None:
        super().__init__(
            f"stream {stream_id!r}: expected version {expected_version} but it is at "
            f"version {actual_version} (another writer appended first); reload the "
            "aggregate and retry the command"
        )
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version


class DuplicateEventError(EventBusError):
    """Some event ids of an append are already stored, but not as that same append.

    Re-appending exactly the events already stored (same ids, same stream) is a
    no-op; a batch mixing stored and new ids, or reusing an id on another
    stream, is refused because it cannot be both a retry and new work.
    """


class StreamNotFoundError(EventBusError):
    """A stream (an aggregate) has no events (at the version or time asked for)."""


@dataclass(frozen=True)
class StoredEvent:
    """One event as stored: its stream, its version in it, its global position.

    ``envelope`` is the event as it travels on the bus (same id, type, data
    version); ``event`` is its typed message, decoded (and upcast) through the
    process registry; use :meth:`decode` for another registry.
    """

    position: int
    stream_id: str
    version: int
    envelope: Envelope = field(repr=False)

    @cached_property
    def event(self) -> Message:
        """The typed event (old data versions upcast through the registry's upcasters)."""
        return self.decode(registry)

    def decode(self, with_registry: Registry) -> Message:
        """The typed event through ``with_registry``; raises ``SchemaError`` when it cannot."""
        return with_registry.decode(self.envelope)

    @property
    def id(self) -> str:
        """The event id (the envelope's)."""
        return self.envelope.id


@runtime_checkable
class EventStore(Protocol):
    """Append-only streams of events with a global position (see module docs)."""

    async def setup(self) -> None:
        """Create what the store needs (tables); safe to call again."""

    async def append(
        self, stream_id: str, events: Sequence[Envelope], expected_version: int | None
    ) -> list[StoredEvent]:
        """Append ``events`` to ``stream_id`` as versions ``expected_version + 1``...

        ``expected_version`` is the stream's version the caller saw (0: a new
        stream); ``None`` appends at the end whatever it is. When another append
        got there first the database refuses the rows and :class:`ConcurrencyError`
        is raised, nothing written. Appending events whose ids are already stored
        in the stream returns the stored ones, writing nothing (a retried append
        is harmless).
        """

    async def read_stream(
        self,
        stream_id: str,
        *,
        after_version: int = 0,
        to_version: int | None = None,
        until: datetime | None = None,
    ) -> list[StoredEvent]:
        """The stream's events after ``after_version`` up to ``to_version`` in version
        order; with ``until``, only the leading events whose time is not later."""

    async def stream_version(self, stream_id: str) -> int:
        """The stream's current version (0 when it has no events)."""

    async def read_all(self, after: int = 0, limit: int = 500) -> list[StoredEvent]:
        """Up to ``limit`` events with a position greater than ``after``, in position
        order. Gap-safe: an event never becomes visible after one with a higher
        position was returned, so a reader may always continue from the last
        position it saw."""

    async def last_position(self) -> int:
        """The highest committed position (0 for an empty store)."""

    async def get_checkpoint(self, name: str) -> int:
        """The position a named follower (a relay) has finished (0 when new)."""

    async def set_checkpoint(self, name: str, position: int) -> None:
        """Record that the named follower has finished ``position``."""

    async def close(self) -> None:
        """Release connections (a store opened by URL closes its database)."""


async def iter_all(
    store: EventStore, after: int = 0, batch: int = 500
) -> AsyncIterator[StoredEvent]:
    """Every event after ``after`` in position order, read ``batch`` at a time: the
    whole store's replay, e.g. to rebuild a read model from zero."""
    while True:
        page = await store.read_all(after, batch)
        for stored in page:
            yield stored
        if len(page) < batch:
            return
        after = page[-1].position


async def iter_stream(
    store: EventStore, stream_id: str, batch: int = 500
) -> AsyncIterator[StoredEvent]:
    """One stream's events in version order, ``batch`` at a time."""
    after = 0
    while True:
        page = await store.read_stream(stream_id, after_version=after, to_version=after + batch)
        for stored in page:
            yield stored
        if len(page) < batch:
            return
        after = page[-1].version


def check_append(stream_id: str, events: Sequence[Envelope], expected_version: int | None) -> None:
    """Arguments every store refuses the same way."""
    if not stream_id:
        raise ValueError("stream_id must be a non-empty string")
    if expected_version is not None and expected_version < 0:
        raise ValueError(f"expected_version must be >= 0 or None, not {expected_version}")
    ids = [e.id for e in events]
    if len(set(ids)) != len(ids):
        raise DuplicateEventError(
            f"stream {stream_id!r}: the same event id appears twice in one append; "
            "give every event its own id"
        )


def duplicate_error(stream_id: str, found: int, total: int) -> DuplicateEventError:
    """The error for an append of which only some ids are stored (or on another stream)."""
    return DuplicateEventError(
        f"stream {stream_id!r}: {found} of the {total} event ids of this append are "
        "already stored, but not as this same append to this stream; retry an append "
        "with exactly the events it had, and give new events new ids"
    )
