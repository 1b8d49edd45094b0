"""The broker's statements, written once for SQLite and PostgreSQL.

(Over 400 lines on purpose: every statement of the broker, written once for both
dialects, read side by side.)

Time is the database's own clock (``NOW``), so the consumers of a group agree on
when a lease ends or a delay is due even from machines whose clocks differ.
PostgreSQL adds ``FOR UPDATE SKIP LOCKED`` where consumers compete (two claims
never take one row, and neither waits for the other) and takes the topic's row
lock when publishing; SQLite has one writer at a time, so neither is needed there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eventbus.patterns.sql import Transaction

NOW = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgres": "extract(epoch from clock_timestamp())::double precision",
}
REFILL_BATCH = 256
"""Messages moved from the log into a group's pending rows at most per claim."""
BUSY = -1
"""What :meth:`Statements.refill` returns while another consumer refills the group."""
COUNT_LIMIT = 1000
"""Backlog counts stop here: a stall needs one message; a precise large count is not
worth a long scan."""

# A pending row may go out when it is due and is its key's head: no earlier pending row
# of its key (held by a consumer, or waiting out a delay) is still there.
_CLAIMABLE = """p.group_id = $1 AND p.available_at <= {now}
  AND (p.msg_key IS NULL OR NOT EXISTS (
    SELECT 1 FROM eventbus_pending e WHERE e.group_id = p.group_id
      AND e.msg_key = p.msg_key AND e.message_id < p.message_id))"""


@dataclass(frozen=True, slots=True)
class Message:
    """One claimed message: its id, its delivery count and its stored form."""

    id: int
    attempts: int
    headers: str | None
    body: bytes | None


def _ids(first: int, count: int) -> str:
    return ", ".join(f"${n}" for n in range(first, first + count))


class Statements:
    """The statements of one dialect."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self.pg = dialect == "postgres"
        now = self.now = NOW[dialect]
        claimable = _CLAIMABLE.format(now=now)
        lock = " FOR UPDATE SKIP LOCKED" if self.pg else ""
        # The bodies come back with the claim (NULL: retention deleted the message).
        message = "(SELECT m.{} FROM eventbus_messages m WHERE m.id = eventbus_pending.message_id)"
        self._claim = (
            f"UPDATE eventbus_pending SET available_at = {now} + $2, owner = $3, "
            "attempts = attempts + 1 WHERE group_id = $1 AND message_id IN ("
            f"SELECT p.message_id FROM eventbus_pending p WHERE {claimable} "
            f"ORDER BY p.message_id LIMIT $4{lock}) RETURNING message_id, attempts, "
            f"{message.format('headers')}, {message.format('body')}"
        )
        self._claimable_count = (
            f"SELECT count(*) FROM (SELECT 1 FROM eventbus_pending p WHERE {claimable} "
            f"LIMIT {COUNT_LIMIT}) c"
        )
        self._position = "SELECT position FROM eventbus_groups WHERE id = $1" + (
            " FOR UPDATE SKIP LOCKED" if self.pg else ""
        )

    # -- publishing --------------------------------------------------------------------

    async def append(
        self,
        tx: Transaction,
        topic: str,
        only_group: str | None,
        rows: Sequence[tuple[str | None, str, bytes]],
    ) -> None:
        """Store ``rows`` (key, headers, body) on ``topic``; the topic's row is updated
        first: on PostgreSQL its lock orders the topic's publishers (see provision)."""
        await tx.execute(
            "INSERT INTO eventbus_topics (name, version, created_at) VALUES "
            f"($1, 1, {self.now}) ON CONFLICT (name) DO UPDATE SET "
            "version = eventbus_topics.version + 1",
            topic,
        )
        await tx.executemany(
            "INSERT INTO eventbus_messages (topic, only_group, msg_key, headers, body, "
            f"published_at) VALUES ($1, $2, $3, $4, $5, {self.now})",
            [(topic, only_group, key, headers, body) for key, headers, body in rows],
        )

    async def touch(self, tx: Transaction, topic: str) -> None:
        """Count a change on ``topic`` that other processes should notice (messages
        handed back): SQLite's watchers see the version move."""
        await tx.execute("UPDATE eventbus_topics SET version = version + 1 WHERE name = $1", topic)

    # -- groups --------------------------------------------------------------------------

    async def join(
        self, tx: Transaction, topic: str, group: str, position: int | None
    ) -> tuple[int, int]:
        """The group's id and position, creating it if new: at ``position`` when given,
        else at the end of the topic (``latest``: only what is published afterwards)."""
        await tx.execute(
            "INSERT INTO eventbus_topics (name, version, created_at) VALUES "
            f"($1, 0, {self.now}) ON CONFLICT (name) DO NOTHING",
            topic,
        )
        start = (
            "$3"
            if position is not None
            else ("(SELECT coalesce(max(id), 0) FROM eventbus_messages WHERE topic = $1)")
        )
        args: tuple[Any, ...] = (topic, group) if position is None else (topic, group, position)
        await tx.execute(
            "INSERT INTO eventbus_groups (topic, name, position, created_at) VALUES "
            f"($1, $2, {start}, {self.now}) ON CONFLICT (topic, name) DO NOTHING",
            *args,
        )
        row = await tx.fetchrow(
            "SELECT id, position FROM eventbus_groups WHERE topic = $1 AND name = $2", topic, group
        )
        assert row is not None
        return int(row[0]), int(row[1])

    async def delete_group(self, tx: Transaction, topic: str, group: str) -> int:
        """Delete a group with what it holds (the resource-deleted conformance hook)."""
        await tx.execute(
            "DELETE FROM eventbus_pending WHERE group_id IN (SELECT id FROM "
            "eventbus_groups WHERE topic = $1 AND name = $2)",
            topic,
            group,
        )
        return await tx.execute(
            "DELETE FROM eventbus_groups WHERE topic = $1 AND name = $2", topic, group
        )

    # -- claiming -----------------------------------------------------------------------

    async def refill(
        self, tx: Transaction, gid: int, topic: str, group: str, count: int
    ) -> int | None:
        """Move up to ``count`` new messages of the log into the group's pending rows and
        advance its position; returns the new position, ``0`` when there was nothing
        new, :data:`BUSY` when (on PostgreSQL) another consumer of the group is refilling
        it right now, ``None`` when the group no longer exists."""
        if self.pg:
            return await self._refill_pg(tx, gid, topic, group, count)
        rows = await tx.fetch(self._position, gid)
        if not rows:
            exists = await tx.fetch("SELECT 1 FROM eventbus_groups WHERE id = $1", gid)
            return BUSY if exists else None
        position = int(rows[0][0])
        last = (
            await tx.fetch(
                "SELECT max(id) FROM (SELECT id FROM eventbus_messages WHERE topic = $1 "
                "AND id > $2 ORDER BY id LIMIT $3) s",
                topic,
                position,
                count,
            )
        )[0][0]
        if last is None:
            return 0
        # fetch() runs a statement in one trip where execute() takes two (SQLite).
        await tx.fetch(
            "INSERT INTO eventbus_pending (group_id, message_id, msg_key, available_at, "
            "owner, attempts) SELECT $1, id, msg_key, 0, NULL, 0 FROM eventbus_messages "
            "WHERE topic = $2 AND id > $3 AND id <= $4 AND (only_group IS NULL OR "
            "only_group = $5) ON CONFLICT (group_id, message_id) DO NOTHING",
            gid,
            topic,
            position,
            int(last),
            group,
        )
        await tx.fetch("UPDATE eventbus_groups SET position = $2 WHERE id = $1", gid, int(last))
        return int(last)

    async def _refill_pg(
        self, tx: Transaction, gid: int, topic: str, group: str, count: int
    ) -> int | None:
        """:meth:`refill` in one statement (one round trip instead of four)."""
        row = (
            await tx.fetch(
                "WITH g AS (SELECT id, position FROM eventbus_groups WHERE id = $1 "
                "FOR UPDATE SKIP LOCKED), "
                "s AS (SELECT m.id, m.msg_key, m.only_group FROM eventbus_messages m, g "
                "WHERE m.topic = $2 AND m.id > g.position ORDER BY m.id LIMIT $3), "
                "ins AS (INSERT INTO eventbus_pending (group_id, message_id, msg_key, "
                "available_at, owner, attempts) SELECT $1, s.id, s.msg_key, 0, NULL, 0 FROM s "
                "WHERE s.only_group IS NULL OR s.only_group = $4 "
                "ON CONFLICT (group_id, message_id) DO NOTHING), "
                "upd AS (UPDATE eventbus_groups SET position = (SELECT max(id) FROM s) "
                "WHERE id = $1 AND EXISTS (SELECT 1 FROM s) RETURNING position) "
                "SELECT (SELECT count(*) FROM g), (SELECT position FROM upd)",
                gid,
                topic,
                count,
                group,
            )
        )[0]
        if not row[0]:
            exists = await tx.fetch("SELECT 1 FROM eventbus_groups WHERE id = $1", gid)
            return BUSY if exists else None
        return 0 if row[1] is None else int(row[1])

    async def claim(
        self, tx: Transaction, gid: int, owner: str, count: int, lease: float
    ) -> list[Message]:
        """Lease up to ``count`` claimable pending rows to ``owner`` for ``lease`` seconds,
        counting a delivery each; in log order, with their stored form (``None`` when
        the message no longer exists)."""
        if count <= 0:
            return []
        rows = await tx.fetch(self._claim, gid, lease, owner, count)
        return sorted(
            (
                Message(
                    int(r[0]),
                    int(r[1]),
                    None if r[2] is None else str(r[2]),
                    None if r[3] is None else bytes(r[3]),
                )
                for r in rows
            ),
            key=lambda m: m.id,
        )

    async def forget(self, tx: Transaction, gid: int, ids: Sequence[int]) -> None:
        """Delete the group's pending rows of ``ids`` (their messages no longer exist)."""
        if ids:
            await tx.execute(
                f"DELETE FROM eventbus_pending WHERE group_id = $1 AND "
                f"message_id IN ({_ids(2, len(ids))})",
                gid,
                *ids,
            )

    async def next_due(self, tx: Transaction, gid: int, owner: str) -> float | None:
        """Seconds until the group's next pending row not held by ``owner`` is due (a
        delay ending, another consumer's lease running out), or ``None``."""
        value = (
            await tx.fetch(
                f"SELECT min(available_at) - {self.now} FROM eventbus_pending WHERE group_id = $1 "
                f"AND available_at > {self.now} AND (owner IS NULL OR owner <> $2)",
                gid,
                owner,
            )
        )[0][0]
        return None if value is None else max(0.0, float(value))

    # -- settling ------------------------------------------------------------------------

    async def ack(self, tx: Transaction, gid: int, owner: str, ids: Sequence[int]) -> set[int]:
        """Delete the rows of ``ids`` that ``owner`` still holds; returns those (the others'
        leases were lost: another consumer may have them)."""
        rows = await tx.fetch(
            "DELETE FROM eventbus_pending WHERE group_id = $1 AND owner = $2 AND message_id "
            f"IN ({_ids(3, len(ids))}) RETURNING message_id",
            gid,
            owner,
            *ids,
        )
        return {int(r[0]) for r in rows}

    async def nack(
        self, tx: Transaction, gid: int, message_id: int, owner: str, delay: float
    ) -> bool:
        """Give the row back, due in ``delay`` seconds (its key stays held meanwhile)."""
        return (
            await tx.execute(
                f"UPDATE eventbus_pending SET available_at = {self.now} + $4, owner = NULL "
                "WHERE group_id = $1 AND message_id = $2 AND owner = $3",
                gid,
                message_id,
                owner,
                delay,
            )
            > 0
        )

    async def extend(
        self, tx: Transaction, gid: int, owner: str, ids: Sequence[int], lease: float
    ) -> set[int]:
        """Renew ``owner``'s lease of ``ids``; returns those it still held."""
        if not ids:
            return set()
        rows = await tx.fetch(
            f"UPDATE eventbus_pending SET available_at = {self.now} + $3 WHERE group_id = $1 "
            f"AND owner = $2 AND message_id IN ({_ids(4, len(ids))}) RETURNING message_id",
            gid,
            owner,
            lease,
            *ids,
        )
        return {int(r[0]) for r in rows}

    async def release(
        self, tx: Transaction, gid: int, owner: str, ids: Sequence[int], uncount: bool
    ) -> int:
        """Hand ``ids`` back to the group at once; ``uncount``: they never reached a
        handler, so their delivery does not count."""
        if not ids:
            return 0
        minus = ", attempts = attempts - 1" if uncount else ""
        return await tx.execute(
            f"UPDATE eventbus_pending SET available_at = {self.now}, owner = NULL{minus} "
            f"WHERE group_id = $1 AND owner = $2 AND message_id IN ({_ids(3, len(ids))})",
            gid,
            owner,
            *ids,
        )

    # -- looking ---------------------------------------------------------------------------

    async def backlog(self, tx: Transaction, gid: int, topic: str, group: str) -> int | None:
        """Messages the group could be given now (``None``: the group is gone)."""
        position = await tx.fetchval("SELECT position FROM eventbus_groups WHERE id = $1", gid)
        if position is None:
            return None
        new = await tx.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM eventbus_messages WHERE topic = $1 AND "
            "id > $2 AND (only_group IS NULL OR only_group = $3) LIMIT "
            f"{COUNT_LIMIT}) n",
            topic,
            int(position),
            group,
        )
        waiting = await tx.fetchval(self._claimable_count, gid)
        return int(new or 0) + int(waiting or 0)

    async def topic_exists(self, tx: Transaction, topic: str) -> bool:
        return bool(await tx.fetchval("SELECT 1 FROM eventbus_topics WHERE name = $1", topic))

    async def read(
        self, tx: Transaction, topic: str, limit: int | None
    ) -> list[tuple[int, str, bytes]]:
        """The topic's retained messages, oldest first (not those sent to one group)."""
        rows = await tx.fetch(
            "SELECT id, headers, body FROM eventbus_messages WHERE topic = $1 AND "
            "only_group IS NULL ORDER BY id" + (" LIMIT $2" if limit is not None else ""),
            *((topic,) if limit is None else (topic, limit)),
        )
        return [(int(r[0]), str(r[1]), bytes(r[2])) for r in rows]

    async def versions(self, tx: Transaction, topics: Sequence[str]) -> dict[str, int]:
        """Each topic's change count (SQLite's watchers compare them)."""
        if not topics:
            return {}
        rows = await tx.fetch(
            f"SELECT name, version FROM eventbus_topics WHERE name IN ({_ids(1, len(topics))})",
            *topics,
        )
        return {str(r[0]): int(r[1]) for r in rows}

    # -- retention ---------------------------------------------------------------------------

    async def expire(
        self,
        tx: Transaction,
        topic: str,
        max_age: float | None,
        max_messages: int | None,
        batch: int = 1000,
    ) -> int:
        """Delete up to ``batch`` of ``topic``'s oldest messages that are older than
        ``max_age`` seconds or beyond its newest ``max_messages``, except those a group
        still holds. Walks the topic from its oldest message, so it needs no index but
        the log's own."""
        limit = None
        if max_messages is not None:
            rows = await tx.fetch(
                "SELECT id FROM eventbus_messages WHERE topic = $1 ORDER BY "
                "id DESC LIMIT 1 OFFSET $2",
                topic,
                max_messages,
            )
            limit = int(rows[0][0]) if rows else None
        rows = await tx.fetch(
            f"SELECT id, published_at < {self.now} - $2 FROM eventbus_messages WHERE "
            "topic = $1 ORDER BY id LIMIT $3",
            topic,
            max_age or 0.0,
            batch,
        )
        doomed = []
        for row_id, old in rows:
            # Publish times grow with ids (a topic's publishers take turns): the first
            # young message within the count ends the walk.
            if not ((max_age is not None and old) or (limit is not None and row_id <= limit)):
                break
            doomed.append(int(row_id))
        if not doomed:
            return 0
        held = await tx.fetch(
            "SELECT p.message_id FROM eventbus_pending p WHERE p.group_id IN (SELECT id FROM "
            f"eventbus_groups WHERE topic = $1) AND p.message_id IN ({_ids(2, len(doomed))})",
            topic,
            *doomed,
        )
        keep = {int(r[0]) for r in held}
        doomed = [row_id for row_id in doomed if row_id not in keep]
        if doomed:
            await tx.fetch(
                f"DELETE FROM eventbus_messages WHERE id IN ({_ids(1, len(doomed))})", *doomed
            )
        return len(doomed)
