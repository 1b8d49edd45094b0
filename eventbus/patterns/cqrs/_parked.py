"""The store-fed projection's parked events (table ``eventbus_projection_parked``).

What parking means, and why a parked event holds its stream, is in
:mod:`eventbus.patterns.eventsourcing.parking`. A projection parks in its own
database, in the transaction that moves its checkpoint past the event, and keeps
the envelope there, so an operator can release it without the event store.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from eventbus.codec import encode_structured
from eventbus.errors import ConfigurationError, InfrastructureError
from eventbus.patterns.eventsourcing.parking import ParkedStoredEvent, held_message
from eventbus.patterns.schema import create_parked_table_2
from eventbus.patterns.sql import Transaction

if TYPE_CHECKING:
    from eventbus.patterns.cqrs.projections import Projection
    from eventbus.patterns.eventsourcing.store import StoredEvent

log = logging.getLogger("eventbus.patterns.cqrs")
PARKED = "eventbus_projection_parked"
_COLUMNS = "position, stream_id, version, event_id, type, error, held_by, parked_at, envelope"


async def create_table(tx: Transaction) -> None:
    """Create the parked table if it is missing."""
    await create_parked_table_2(tx, PARKED, envelope=True)


async def held_streams(tx: Transaction, name: str) -> dict[str, int]:
    """The streams projection ``name`` holds: stream id -> its earliest parked position."""
    rows = await tx.fetch(
        f"SELECT stream_id, MIN(position) FROM {PARKED} WHERE name = $1 GROUP BY stream_id", name
    )
    return {str(stream): int(head) for stream, head in rows}


async def park(
    tx: Transaction, name: str, stored: StoredEvent, error: str, held_by: int | None = None
) -> None:
    """Record ``stored`` as parked by projection ``name`` (again: no change)."""
    error = error if held_by is None else held_message(held_by)
    await tx.execute(
        f"INSERT INTO {PARKED} (name, {_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, "
        "$10) ON CONFLICT (name, position) DO NOTHING",
        *ParkedStoredEvent.of(name, stored, error, held_by).row(),
        encode_structured(stored.envelope),
    )


async def parked(
    tx: Transaction, name: str, stream_id: str | None = None
) -> list[ParkedStoredEvent]:
    """Projection ``name``'s parked events (of one stream), in position order."""
    sql = f"SELECT {_COLUMNS} FROM {PARKED} WHERE name = $1"
    args: list[object] = [name]
    if stream_id is not None:
        sql += " AND stream_id = $2"
        args.append(stream_id)
    return [
        ParkedStoredEvent.from_row(name, row)
        for row in await tx.fetch(sql + " ORDER BY position", *args)
    ]


async def release(projection: Projection, position: int, *, apply_head: bool) -> int:
    """Apply (or, without ``apply_head``, drop) the parked event at ``position`` and
    then the events held behind it, in order, in one transaction that holds the
    checkpoint (so the follower applies nothing of that stream meanwhile). An event
    that fails again becomes its stream's head, with its new error; when that is
    the one at ``position`` its error is raised (after it was recorded)."""
    name = projection.name
    failed: BaseException | None = None
    applied = 0
    async with projection.db.transaction() as tx:
        await projection._lock_checkpoint(tx)
        stream_id = await tx.fetchval(
            f"SELECT stream_id FROM {PARKED} WHERE name = $1 AND position = $2", name, position
        )
        if stream_id is None:
            raise LookupError(
                f"projection {name!r} has no parked event at position {position}; see parked()"
            )
        queue = await parked(tx, name, str(stream_id))
        if queue[0].position != position:
            raise ConfigurationError(
                f"projection {name!r}: the event at position {position} waits behind "
                f"position {queue[0].position} of stream {stream_id!r}; retry or skip that "
                "one first"
            )
        for row in queue:
            if row.position == position and not apply_head:
                await _forget(tx, name, position)
                continue
            await tx.execute("SAVEPOINT eventbus_release")
            try:
                if projection.wants(row.type):
                    await projection.apply(row.stored().decode(projection.registry), tx)
                    applied += 1
                await _forget(tx, name, row.position)
                await tx.execute("RELEASE SAVEPOINT eventbus_release")
            except InfrastructureError:
                raise
            except Exception as exc:
                await tx.execute("ROLLBACK TO SAVEPOINT eventbus_release")
                error = f"{type(exc).__name__}: {exc}"
                await _regroup(tx, name, row, error)
                if row.position == position:
                    failed = exc
                else:
                    log.error(
                        "projection %s: held event at position %d failed (%s); it now "
                        "heads stream %r",
                        name,
                        row.position,
                        error,
                        row.stream_id,
                    )
                break
    if failed is not None:
        raise failed
    return applied


async def _forget(tx: Transaction, name: str, position: int) -> None:
    await tx.execute(f"DELETE FROM {PARKED} WHERE name = $1 AND position = $2", name, position)


async def _regroup(tx: Transaction, name: str, head: ParkedStoredEvent, error: str) -> None:
    """``head`` failed again: it heads its stream now, the later ones wait behind it."""
    await tx.execute(
        f"UPDATE {PARKED} SET error = $3, held_by = NULL, parked_at = $4 "
        "WHERE name = $1 AND position = $2",
        name,
        head.position,
        error,
        time.time(),
    )
    await tx.execute(
        f"UPDATE {PARKED} SET held_by = $3, error = $4 WHERE name = $1 AND "
        "stream_id = $2 AND position > $3",
        name,
        head.stream_id,
        head.position,
        held_message(head.position),
    )
