"""PostgreSQL adapter for eventbus (asyncpg): ``postgres://`` / ``postgresql://``.

The database is the broker: a log table, groups with their own positions, competing
consumers through ``FOR UPDATE SKIP LOCKED``, wake-ups through ``LISTEN/NOTIFY``.
See ``docs/adapters/postgres.md`` for the options and the guarantees.
"""

from .adapter import PostgresAdapter
from .settings import parse_settings

__all__ = ["PostgresAdapter", "parse_settings"]
