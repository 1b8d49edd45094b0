"""Load aggregates from their streams and save what they recorded."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Generic, TypeVar

from eventbus.errors import ConfigurationError, EventBusError, SchemaError
from eventbus.events import Message, Registry, registry
from eventbus.patterns.eventsourcing.aggregate import Aggregate
from eventbus.patterns.eventsourcing.snapshots import Snapshot, SnapshotStore, crossed
from eventbus.patterns.eventsourcing.state import LegacyStateError
from eventbus.patterns.eventsourcing.store import EventStore, StoredEvent, StreamNotFoundError
from eventbus.publishing import build_envelopes

log = logging.getLogger("eventbus.patterns.eventsourcing")
A = TypeVar("A", bound=Aggregate)


class Repository(Generic[A]):
    """Loads and saves aggregates of one class through an event store.

    ``snapshot_every=N`` takes a snapshot each time a save crosses a multiple of
    N events (the store must keep snapshots; every store here does); loads start
    from the latest one (upcast from an older ``snapshot_version`` when the
    aggregate has the upcasters, else ignored; one that cannot be restored is
    logged and the events are replayed instead). ``source`` is the CloudEvents
    source of the envelopes written. Old data versions are upcast through ``registry`` on load.
    """

    def __init__(
        self,
        store: EventStore,
        aggregate: type[A],
        *,
        snapshot_every: int | None = None,
        source: str = "eventstore",
        registry: Registry = registry,
    ) -> None:
        if snapshot_every is not None and snapshot_every < 1:
            raise ConfigurationError(f"snapshot_every must be >= 1 or None, not {snapshot_every}")
        if snapshot_every and not isinstance(store, SnapshotStore):
            raise ConfigurationError(f"{type(store).__name__} does not keep snapshots")
        self.store = store
        self.aggregate = aggregate
        self.snapshot_every = snapshot_every or 0
        self.source = source
        self.registry = registry

    async def load(self, id: str, *, version: int | None = None, at: datetime | None = None) -> A:
        """The aggregate ``id`` now, as of event ``version``, or as of time ``at``
        (the events whose time is not later than ``at``).

        Raises :class:`StreamNotFoundError` when it has no events (then or at all),
        ``SchemaError`` naming the stream when a stored event cannot be decoded
        (an old data version without its upcaster, an unknown type).
        """
        if at is not None and at.tzinfo is None:
            at = at.replace(tzinfo=UTC)  # event times are UTC; a naive time is read as UTC
        aggregate = self.aggregate(id)
        after = 0
        if self.snapshot_every and at is None:
            snapshot = await self.store.load_snapshot(id, version)  # type: ignore[attr-defined]
            restored = self._restore(snapshot) if snapshot is not None else None
            if restored is not None:
                aggregate, after = restored, restored.version
        events = await self.store.read_stream(id, after_version=after, to_version=version, until=at)
        for stored in events:
            aggregate.apply(self._decode(stored))
            if aggregate.version != stored.version:
                raise EventBusError(
                    f"stream {id!r}: event {stored.id} is version {stored.version} but the "
                    f"aggregate reached version {aggregate.version}; the stream has a hole"
                )
        if aggregate.version == 0:
            when = f" as of version {version}" if version is not None else ""
            when += f" as of {at.isoformat()}" if at is not None else ""
            raise StreamNotFoundError(
                f"no {self.aggregate.__name__} {id!r}{when}: its stream has no events"
            )
        return aggregate

    def _restore(self, snapshot: Snapshot) -> A | None:
        """The aggregate from ``snapshot`` (upcast from an older ``snapshot_version``),
        or ``None`` to replay from the first event: a snapshot is only a cache."""
        cls = self.aggregate
        if snapshot.type != cls.snapshot_type or snapshot.schema > cls.snapshot_version:
            return None
        aggregate = cls(snapshot.stream_id)
        try:
            state: bytes | None = snapshot.state
            if snapshot.schema < cls.snapshot_version:
                state = cls.upcast_snapshot(snapshot.state, snapshot.schema)
            if state is None:
                return None
            aggregate.restore_state(state)
        except LegacyStateError:
            log.info(
                "snapshot of %s %r at version %d is in an earlier, inexact form; "
                "replaying its events (the next snapshot replaces it)",
                cls.__name__,
                snapshot.stream_id,
                snapshot.version,
            )
            return None
        except Exception as exc:
            log.warning(
                "snapshot of %s %r at version %d cannot be restored (%s: %s); "
                "replaying its events instead",
                cls.__name__,
                snapshot.stream_id,
                snapshot.version,
                type(exc).__name__,
                exc,
            )
            return None
        aggregate.version = snapshot.version
        return aggregate

    def _decode(self, stored: StoredEvent) -> Message:
        try:
            return stored.decode(self.registry)
        except SchemaError as exc:
            raise SchemaError(
                f"stream {stored.stream_id!r} version {stored.version}: {exc}"
            ) from exc

    async def save(self, aggregate: A) -> list[StoredEvent]:
        """Append the aggregate's pending events at the version it was loaded at.

        Raises :class:`ConcurrencyError` when the stream moved on since the load.
        Saving again after a failure (a lost connection) resends the same event
        ids, so an append that did commit is not written twice.
        """
        pending = aggregate._pending
        if not pending:
            return []
        if not aggregate._envelopes:
            aggregate._envelopes = build_envelopes(
                pending, self.source, key=aggregate.id, subject=aggregate.id
            )
        expected = aggregate.version - len(pending)
        stored = await self.store.append(aggregate.id, aggregate._envelopes, expected)
        aggregate._mark_saved()
        if self.snapshot_every and crossed(expected, aggregate.version, self.snapshot_every):
            await self._snapshot(aggregate)
        return stored

    async def _snapshot(self, aggregate: A) -> None:
        # The events are committed; a snapshot is only a cache, so failing to write
        # one is logged and the next crossing tries again.
        try:
            await self.store.save_snapshot(  # type: ignore[attr-defined]
                Snapshot(
                    aggregate.id,
                    aggregate.version,
                    aggregate.snapshot_type,
                    aggregate.snapshot_version,
                    aggregate.snapshot_state(),
                )
            )
        except Exception as exc:
            log.warning(
                "snapshot of %s %r at version %d failed: %s: %s",
                type(aggregate).__name__,
                aggregate.id,
                aggregate.version,
                type(exc).__name__,
                exc,
            )

    async def replay(self, id: str) -> A:
        """Rebuild the aggregate from all its events, ignoring snapshots."""
        aggregate = self.aggregate(id)
        for stored in await self.store.read_stream(id):
            aggregate.apply(self._decode(stored))
        if aggregate.version == 0:
            raise StreamNotFoundError(f"no {self.aggregate.__name__} {id!r}: no events")
        return aggregate
