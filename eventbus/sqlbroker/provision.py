"""The broker's four tables, created on first use and versioned with the patterns' tables.

- ``eventbus_topics``: one row per topic; ``version`` counts its publishes, and
  the row is what publishers of one topic take turns on (PostgreSQL: the row lock
  of the ``UPDATE``), so a topic's ids are committed in the order they were given
  and a group's position never passes a message that commits later.
- ``eventbus_messages``: the log of every topic. ``id`` is never reused
  (``AUTOINCREMENT`` / identity), so a position stays valid after retention;
  ``only_group`` marks a message sent to one group alone (``publish_to_group``).
- ``eventbus_groups``: a group's position on its topic: the last message moved
  into its pending rows (or passed over, for other groups' routed messages).
- ``eventbus_pending``: what a group took from the log and has not settled: one
  row per message with its delivery count (``attempts``), its consumer
  (``owner``, while leased) and ``available_at``, the time it may go out again (a
  lease's end, or a ``nack(delay)``'s due time). An ack deletes the row.

The group of tables is recorded in ``eventbus_schema_versions`` as the kind
``message log`` (:mod:`eventbus.patterns.schema`), so ``eventbus db migrate``
upgrades it with the patterns' tables when a release changes it.
"""

from __future__ import annotations

from eventbus.errors import ProvisioningError
from eventbus.patterns.schema import KINDS, ready, table_columns
from eventbus.patterns.sql import Database, blob_type, real_type

MAIN_TABLE = "eventbus_messages"


def _ddl(dialect: str) -> list[str]:
    pg = dialect == "postgres"
    real, blob = real_type(dialect), blob_type(dialect)
    serial = (
        "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
        if pg
        else "INTEGER PRIMARY KEY AUTOINCREMENT"
    )
    rowid = "" if pg else " WITHOUT ROWID"
    return [
        "CREATE TABLE IF NOT EXISTS eventbus_topics (name TEXT PRIMARY KEY, "
        f"version BIGINT NOT NULL DEFAULT 0, created_at {real} NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS eventbus_messages (id {serial}, topic TEXT NOT NULL, "
        "only_group TEXT, msg_key TEXT, headers TEXT NOT NULL, "
        f"body {blob} NOT NULL, published_at {real} NOT NULL)",
        # The only index of the log: every read (refill, browse, retention) walks a topic
        # in id order; each one more is paid by every publish.
        "CREATE INDEX IF NOT EXISTS eventbus_messages_topic ON eventbus_messages (topic, id)",
        f"CREATE TABLE IF NOT EXISTS eventbus_groups (id {serial}, topic TEXT NOT NULL, "
        f"name TEXT NOT NULL, position BIGINT NOT NULL, created_at {real} NOT NULL, "
        "UNIQUE (topic, name))",
        "CREATE TABLE IF NOT EXISTS eventbus_pending (group_id BIGINT NOT NULL, "
        f"message_id BIGINT NOT NULL, msg_key TEXT, available_at {real} NOT NULL, "
        "owner TEXT, attempts INTEGER NOT NULL DEFAULT 0, "
        f"PRIMARY KEY (group_id, message_id)){rowid}",
        # A key's head (its lowest pending message) is found by this index. No other:
        # a group's pending rows are few (what it holds and what waits behind a key),
        # read through the primary key, and every claim rewrites each row it takes.
        "CREATE INDEX IF NOT EXISTS eventbus_pending_key ON eventbus_pending "
        "(group_id, msg_key, message_id)",
    ]


TABLES = ("eventbus_topics", MAIN_TABLE, "eventbus_groups", "eventbus_pending")


async def provision(db: Database, *, create: bool = True, where: str = "") -> None:
    """Create the tables if missing, after checking their schema version (a table group
    at another version raises :class:`~eventbus.patterns.schema.SchemaVersionError`
    naming ``eventbus db migrate``).

    ``create=False`` (the URL's ``provision=false``: the application's database role
    may not create tables) runs no DDL at all: it only checks that the tables exist,
    raising :class:`~eventbus.errors.ProvisioningError` naming the missing ones."""
    if not create:
        async with db.transaction() as tx:
            missing = [table for table in TABLES if not await table_columns(tx, table)]
        if missing:
            raise ProvisioningError(
                f"the broker's table(s) {', '.join(missing)} do not exist in "
                f"{where or 'the database'} and the URL says provision=false, so they are "
                "not created; create them by connecting once with provision=true (as a role "
                "that may create tables), or drop provision=false"
            )
        return
    async with db.transaction() as tx:
        await ready(tx, KINDS["message log"], MAIN_TABLE, db.url)
        for statement in _ddl(db.dialect):
            await tx.execute(statement)
