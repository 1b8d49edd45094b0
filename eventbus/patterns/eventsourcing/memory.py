"""The in-memory event store: for tests and single-process tools (nothing survives a restart)."""

from __future__ import annotations

import asyncio
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from eventbus.envelope import Envelope
from eventbus.patterns.eventsourcing.parking import ParkedStoredEvent
from eventbus.patterns.eventsourcing.snapshots import Snapshot
from eventbus.patterns.eventsourcing.store import (
    ConcurrencyError,
    StoredEvent,
    check_append,
    duplicate_error,
)


class MemoryEventStore:
    """An :class:`~eventbus.patterns.eventsourcing.store.EventStore` (and snapshot
    store, and parking store) in process memory. Appends are atomic under one lock, so positions are
    assigned in commit order and ``read_all`` is gap-safe."""

    def __init__(self) -> None:
        self._log: list[StoredEvent] = []  # index i holds position i + 1
        self._streams: dict[str, list[StoredEvent]] = {}
        self._by_id: dict[str, StoredEvent] = {}
        self._checkpoints: dict[str, int] = {}
        self._snapshots: dict[str, list[Snapshot]] = {}
        self._parked: dict[str, dict[int, ParkedStoredEvent]] = {}
        self._lock = asyncio.Lock()

    async def setup(self) -> None:
        """Nothing to create."""

    async def append(
        self, stream_id: str, events: Sequence[Envelope], expected_version: int | None
    ) -> list[StoredEvent]:
        """See :meth:`EventStore.append`."""
        check_append(stream_id, events, expected_version)
        if not events:
            return []
        async with self._lock:
            known = [self._by_id[e.id] for e in events if e.id in self._by_id]
            if known:
                if len(known) == len(events) and all(s.stream_id == stream_id for s in known):
                    return known
                raise duplicate_error(stream_id, len(known), len(events))
            stream = self._streams.setdefault(stream_id, [])
            current = len(stream)
            if expected_version is not None and expected_version != current:
                raise ConcurrencyError(stream_id, expected_version, current)
            stored = []
            for offset, envelope in enumerate(events, start=1):
                item = StoredEvent(len(self._log) + 1, stream_id, current + offset, envelope)
                self._log.append(item)
                stream.append(item)
                self._by_id[envelope.id] = item
                stored.append(item)
            return stored

    async def read_stream(
        self,
        stream_id: str,
        *,
        after_version: int = 0,
        to_version: int | None = None,
        until: datetime | None = None,
    ) -> list[StoredEvent]:
        """See :meth:`EventStore.read_stream`."""
        stream = self._streams.get(stream_id, [])
        picked = stream[after_version:to_version]
        if until is not None:
            picked = _leading_until(picked, until)
        return list(picked)

    async def stream_version(self, stream_id: str) -> int:
        """See :meth:`EventStore.stream_version`."""
        return len(self._streams.get(stream_id, ()))

    async def read_all(self, after: int = 0, limit: int = 500) -> list[StoredEvent]:
        """See :meth:`EventStore.read_all`."""
        return self._log[max(after, 0) : max(after, 0) + limit]

    async def last_position(self) -> int:
        """See :meth:`EventStore.last_position`."""
        return len(self._log)

    async def get_checkpoint(self, name: str) -> int:
        """See :meth:`EventStore.get_checkpoint`."""
        return self._checkpoints.get(name, 0)

    async def set_checkpoint(self, name: str, position: int) -> None:
        """See :meth:`EventStore.set_checkpoint`."""
        self._checkpoints[name] = position

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` (one per stream and version)."""
        kept = self._snapshots.setdefault(snapshot.stream_id, [])
        kept[:] = [s for s in kept if s.version != snapshot.version]
        kept.append(snapshot)
        kept.sort(key=lambda s: s.version)

    async def load_snapshot(
        self, stream_id: str, max_version: int | None = None
    ) -> Snapshot | None:
        """The latest snapshot of ``stream_id`` at or below ``max_version``."""
        kept = self._snapshots.get(stream_id, [])
        if max_version is None:
            return kept[-1] if kept else None
        index = bisect_right([s.version for s in kept], max_version)
        return kept[index - 1] if index else None

    async def park(self, name: str, events: Sequence[ParkedStoredEvent]) -> None:
        """See :meth:`ParkingStore.park`."""
        kept = self._parked.setdefault(name, {})
        for parked in events:
            kept[parked.position] = replace(
                parked, envelope=self._log[parked.position - 1].envelope
            )

    async def parked(self, name: str) -> list[ParkedStoredEvent]:
        """See :meth:`ParkingStore.parked`."""
        return [p for _, p in sorted(self._parked.get(name, {}).items())]

    async def unpark(self, name: str, positions: Sequence[int]) -> None:
        """See :meth:`ParkingStore.unpark`."""
        kept = self._parked.get(name, {})
        for position in positions:
            kept.pop(position, None)

    async def close(self) -> None:
        """Nothing to release."""


def _leading_until(events: list[StoredEvent], until: datetime) -> list[StoredEvent]:
    """The events up to (not including) the first one later than ``until``."""
    for index, stored in enumerate(events):
        if stored.envelope.time > until:
            return events[:index]
    return events
