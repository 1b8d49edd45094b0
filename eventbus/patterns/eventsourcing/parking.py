"""Parked events: a stored event a follower (the event relay, a projection) cannot
handle for good is set aside instead of stopping the follower for every stream.

Why park instead of retrying: a follower reads the store in position order from
one checkpoint, so one event that always fails (the broker refuses it as too
large, its type is no longer known, ``apply()`` has a bug for it) would hold
back every later event of every stream, forever. Parking records it (and why),
moves the checkpoint past it, and **holds its stream**: later events of the same
stream are parked behind it rather than delivered out of order. The other
streams go on. An operator then fixes the cause and *retries* the parked event
(it and the events held behind it are delivered, in order), or *skips* it (it is
dropped; the events held behind it are delivered).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol, runtime_checkable

from eventbus.codec import decode_structured
from eventbus.envelope import Envelope
from eventbus.patterns.eventsourcing.store import StoredEvent


@dataclass(frozen=True, slots=True)
class ParkedStoredEvent:
    """A stored event set aside by follower ``name``.

    ``held_by`` is ``None`` for an event that failed itself (``error`` says how);
    otherwise it is the position of the parked event of the same stream this
    one was parked behind. A stream's parked events are a queue: the earliest is
    its head, the one to retry or skip.
    """

    name: str
    position: int
    stream_id: str
    version: int
    event_id: str
    type: str
    error: str
    held_by: int | None = None
    parked_at: float = 0.0
    envelope: Envelope | None = field(default=None, repr=False, compare=False)

    @classmethod
    def of(
        cls, name: str, stored: StoredEvent, error: str, held_by: int | None = None
    ) -> ParkedStoredEvent:
        """The parked form of ``stored`` (now)."""
        return cls(
            name,
            stored.position,
            stored.stream_id,
            stored.version,
            stored.id,
            stored.envelope.type,
            error,
            held_by,
            time.time(),
            stored.envelope,
        )

    @classmethod
    def from_row(cls, name: str, r: Sequence[Any]) -> ParkedStoredEvent:
        """Follower ``name``'s parked event read from a parked-table row: :meth:`row`'s
        columns but the name, then the envelope in structured mode."""
        return cls(
            name,
            int(r[0]),
            r[1],
            int(r[2]),
            r[3],
            r[4],
            r[5],
            None if r[6] is None else int(r[6]),
            float(r[7]),
            decode_structured(bytes(r[8])),
        )

    def row(self) -> tuple[Any, ...]:
        """Its parked-table columns: every field but the envelope, in declaration order
        (``name, position, stream_id, version, event_id, type, error, held_by,
        parked_at``)."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name != "envelope")

    def stored(self) -> StoredEvent:
        """The event as the store holds it."""
        if self.envelope is None:  # pragma: no cover - every store here keeps it
            raise ValueError(f"parked event at position {self.position} has no envelope")
        return StoredEvent(self.position, self.stream_id, self.version, self.envelope)


def held_message(head: int) -> str:
    """The ``error`` of an event parked only because its stream is held."""
    return f"held: an earlier event of its stream (position {head}) is parked"


def heads(rows: Sequence[ParkedStoredEvent]) -> dict[str, int]:
    """The held streams of ``rows``: each stream's earliest parked position (its head)."""
    found: dict[str, int] = {}
    for row in rows:
        found[row.stream_id] = min(found.get(row.stream_id, row.position), row.position)
    return found


def regroup(
    rows: Sequence[ParkedStoredEvent], new_head: ParkedStoredEvent, error: str
) -> list[ParkedStoredEvent]:
    """``rows`` (one stream's parked events, in order) after ``new_head`` failed with
    ``error``: it becomes the head and the rows after it wait behind it."""
    out = [replace(new_head, error=error, held_by=None, parked_at=time.time())]
    out += [
        replace(row, held_by=new_head.position, error=held_message(new_head.position))
        for row in rows
        if row.position > new_head.position
    ]
    return out


@runtime_checkable
class ParkingStore(Protocol):
    """Where the event relay parks events; :class:`SQLEventStore` and
    :class:`MemoryEventStore` are both. A store without it makes the relay retry
    a refused event forever, as before parking existed."""

    async def park(self, name: str, events: Sequence[ParkedStoredEvent]) -> None:
        """Record ``events`` as parked by follower ``name`` (replacing the same positions)."""

    async def parked(self, name: str) -> list[ParkedStoredEvent]:
        """Follower ``name``'s parked events, in position order, envelopes included."""

    async def unpark(self, name: str, positions: Sequence[int]) -> None:
        """Forget the parked events at ``positions`` (delivered or skipped)."""
