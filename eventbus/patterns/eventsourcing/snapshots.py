"""Snapshots: an aggregate's state at a version, so a load replays only what came after.

The repository takes one every ``snapshot_every`` events (when a save crosses a
multiple of it) and starts a load from the latest one at or below the version
asked for. A snapshot is only a cache: losing it, or one taken by an older
``snapshot_version`` of the aggregate class, just means replaying from the start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class Snapshot:
    """``state`` (JSON bytes) of aggregate ``type`` (its class's ``snapshot_type``,
    version ``schema``) for ``stream_id`` after event ``version``."""

    stream_id: str
    version: int
    type: str
    schema: int
    state: bytes


@runtime_checkable
class SnapshotStore(Protocol):
    """Where snapshots are kept; every event store here is one."""

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep ``snapshot`` (replacing one of the same stream and version)."""

    async def load_snapshot(
        self, stream_id: str, max_version: int | None = None
    ) -> Snapshot | None:
        """The latest snapshot of ``stream_id`` at or below ``max_version`` (any when None)."""


def crossed(before: int, after: int, every: int) -> bool:
    """True when going from version ``before`` to ``after`` passes a multiple of ``every``."""
    return every > 0 and after // every > before // every
