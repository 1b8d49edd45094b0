"""The relay's two short transactions: claim a batch of rows, and settle it.

A claim is a lease written on the rows (``claimed_by``, ``claimed_until``); the
rows stay unsent and unlocked while the relay publishes them, so nothing holds
a database lock across a broker call (see :mod:`eventbus.patterns.outbox.relay`).
The invariant that keeps per-stream order and one publisher per row: a claim
always covers a prefix of one or more streams' unsent rows, from the oldest, and
a stream with an unsent row under a live claim (or parked) is not claimed again.
"""

from __future__ import annotations

import json
import time
from typing import Any

from eventbus.patterns.sql import Database, Row, Transaction

ROW = "seq, topic, envelope, stream"
"""The columns a claimed row comes back with (in this order)."""


async def claim(
    db: Database, table: str, token: str, lease: float, batch_size: int, streams_per_batch: int
) -> list[Row]:
    """Claim the oldest unsent rows of free streams for ``lease`` seconds; returns them
    oldest first (a prefix of each stream taken)."""
    now = time.time()
    async with db.transaction() as tx:
        if tx.dialect == "postgres":
            rows = await _claim_postgres(tx, table, now, batch_size, streams_per_batch)
        else:
            rows = await _claim_sqlite(tx, table, now, batch_size)
        if rows:
            await _set(
                tx,
                table,
                "claimed_by = $2, claimed_until = $3",
                [row[0] for row in rows],
                token,
                now + lease,
            )
    return rows


async def _claim_sqlite(tx: Transaction, t: str, now: float, batch_size: int) -> list[Row]:
    # BEGIN IMMEDIATE made this the only writer: no other relay claims meanwhile.
    return await tx.fetch(
        f"SELECT {ROW} FROM {t} WHERE sent_at IS NULL AND stream NOT IN "
        f"(SELECT stream FROM {t} WHERE sent_at IS NULL AND "
        "(failed_at IS NOT NULL OR claimed_until > $1)) ORDER BY seq LIMIT $2",
        now,
        batch_size,
    )


async def _claim_postgres(
    tx: Transaction, t: str, now: float, batch_size: int, streams_per_batch: int
) -> list[Row]:
    # The head (oldest unsent row) of each stream with nothing parked and no live
    # claim, oldest streams first ...
    heads = await tx.fetch(
        f"SELECT min(seq) FROM {t} WHERE sent_at IS NULL GROUP BY stream "
        "HAVING count(failed_at) = 0 AND coalesce(max(claimed_until), 0) <= $1 "
        "ORDER BY 1 LIMIT $2",
        now,
        batch_size,
    )
    if not heads:
        return []
    # ... locked unless another relay is claiming it right now; the WHERE is checked
    # again on the locked row, so a head sent or claimed meanwhile is left out ...
    locked = await tx.fetch(
        f"SELECT stream FROM {t} WHERE seq = ANY($1::bigint[]) AND sent_at IS NULL "
        "AND (claimed_until IS NULL OR claimed_until <= $3) "
        "ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED",
        [h[0] for h in heads],
        streams_per_batch,
        now,
    )
    if not locked:
        return []
    # ... then the rows of the streams whose head we hold, oldest first: a prefix of
    # each such stream, which no other relay claims while we hold its head.
    return await tx.fetch(
        f"SELECT {ROW} FROM {t} WHERE stream = ANY($1::text[]) AND sent_at IS NULL "
        "ORDER BY seq LIMIT $2 FOR UPDATE",
        [s[0] for s in locked],
        batch_size,
    )


async def settle(
    db: Database, table: str, token: str, sent: list[Any], refused: dict[Any, str]
) -> None:
    """Mark ``sent`` rows sent, park ``refused`` ones (``seq -> error``), and release
    this batch's claim on the rest, in one transaction."""
    now = time.time()
    async with db.transaction() as tx:
        if sent:
            await _set(
                tx, table, "sent_at = $2, claimed_by = NULL, claimed_until = NULL", sent, now
            )
        for seq, error in refused.items():
            await tx.execute(
                f"UPDATE {table} SET failed_at = $1, error = $2, claimed_by = NULL,"
                " claimed_until = NULL WHERE seq = $3",
                now,
                error,
                seq,
            )
        await tx.execute(
            f"UPDATE {table} SET claimed_by = NULL, claimed_until = NULL "
            "WHERE claimed_by = $1 AND sent_at IS NULL",
            token,
        )


async def _set(
    tx: Transaction, table: str, assignments: str, seqs: list[Any], *values: Any
) -> None:
    """``UPDATE table SET assignments`` for the rows ``seqs`` (``$1``); ``values`` are
    ``$2``, ``$3``..."""
    if tx.dialect == "postgres":
        await tx.execute(
            f"UPDATE {table} SET {assignments} WHERE seq = ANY($1::bigint[])", seqs, *values
        )
    else:
        await tx.execute(
            f"UPDATE {table} SET {assignments} WHERE seq IN (SELECT value FROM json_each($1))",
            json.dumps(seqs),
            *values,
        )
