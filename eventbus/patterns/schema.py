"""Checking a pattern's table against the columns this version of eventbus reads.

``CREATE TABLE IF NOT EXISTS`` leaves a table made by an earlier version as it
was: the service starts, and the first statement naming a newer column fails,
message after message. A pattern's ``setup()`` therefore compares the table it
found with what it needs (:func:`missing_columns`) and, through
:func:`ensure_columns`:

- adds the *optional* columns an earlier version lacked (nullable, no default:
  ``ALTER TABLE ... ADD COLUMN`` changes only the catalog on SQLite and
  PostgreSQL, and ``NULL`` is what the new code reads as "not set");
- refuses a table that lacks a *required* column (not a table of this pattern,
  or one no release of it could have made) with :class:`TableSchemaError`,
  naming the table, the columns and what to do.

::

    async with db.transaction() as tx:
        await tx.execute(CREATE_TABLE_IF_NOT_EXISTS)
        await ensure_columns(tx, "eventbus_outbox", required=("seq", "envelope"),
                             optional={"failed_at": "REAL", "error": "TEXT"})
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from eventbus.errors import ConfigurationError
from eventbus.patterns.sql import Transaction

__all__ = ["TableSchemaError", "ensure_columns", "missing_columns", "table_columns"]


class TableSchemaError(ConfigurationError):
    """A pattern's table exists but lacks columns this version needs, and they cannot
    be added safely; the message names the table, the columns and what to do."""

    def __init__(self, message: str, *, table: str, missing: Collection[str]) -> None:
        super().__init__(message)
        self.table = table
        self.missing = sorted(missing)


async def table_columns(tx: Transaction, table: str) -> set[str]:
    """The column names of ``table`` as the database has it (empty when it does not exist)."""
    if tx.dialect == "postgres":
        rows = await tx.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = $1", table)
    else:
        rows = await tx.fetch("SELECT name FROM pragma_table_info($1)", table)
    return {str(row[0]) for row in rows}


async def missing_columns(tx: Transaction, table: str, expected: Collection[str]) -> list[str]:
    """The names in ``expected`` that ``table`` lacks, in ``expected``'s order
    (all of them when the table does not exist)."""
    found = await table_columns(tx, table)
    return [name for name in expected if name not in found]


async def ensure_columns(tx: Transaction, table: str, *, required: Collection[str],
                         optional: Mapping[str, str]) -> list[str]:
    """Make ``table`` (which exists) have every column this version reads.

    ``required`` columns must be there already: :class:`TableSchemaError` when one
    is not. ``optional`` maps each nullable column a release added later to its SQL
    type; the missing ones are added (run this inside the ``setup()`` transaction:
    on SQLite its write lock, on PostgreSQL ``IF NOT EXISTS``, make two processes
    doing it at once harmless). Returns the names of the columns added.
    """
    found = await table_columns(tx, table)
    lacking = [name for name in required if name not in found]
    if lacking:
        raise TableSchemaError(
            f"table {table!r} exists but has no column(s) {', '.join(lacking)}: it was not "
            "made by this pattern's setup(), or by a release this version cannot upgrade. "
            "Point the pattern at another table (table=...), or rename this one and let "
            "setup() create a fresh table, then copy the rows you need",
            table=table, missing=lacking)
    added = [name for name in optional if name not in found]
    exists = " IF NOT EXISTS" if tx.dialect == "postgres" else ""
    for name in added:
        await tx.execute(f"ALTER TABLE {table} ADD COLUMN{exists} {name} {optional[name]}")
    return added
