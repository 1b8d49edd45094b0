"""A database as the broker: ``sqlite:///file.db`` here, ``postgres://`` in ``eventbus-postgres``.

One log table of every topic, groups with their own positions, competing
consumers with leases, per-key order, delays stored in the rows, retention by age
or count; see ``docs/adapters/sqlite.md`` and ``docs/adapters/postgres.md``.
"""

from eventbus.sqlbroker.adapter import SqlAdapter
from eventbus.sqlbroker.settings import SqlSettings
from eventbus.sqlbroker.sqlite import SQLiteAdapter

__all__ = ["SQLiteAdapter", "SqlAdapter", "SqlSettings"]
