"""``postgres://`` / ``postgresql://`` URL -> :class:`~eventbus.sqlbroker.SqlSettings`.

Besides the options every SQL broker takes (``lease``, ``max_age``,
``max_messages``, ``retention_interval``, ``max_message_bytes``, ``idle_poll``; see
:mod:`eventbus.sqlbroker.settings`):

- ``pool_size`` (5): connections of this process's pool for the database (one more
  listens for notifications);
- ``ping_interval`` (5 s): how often the listening connection is pinged;
  ``ping_timeout`` (5 s) bounds the ping and each transaction's ``BEGIN`` (a
  connection that does not answer in time is dropped), so a half-open connection
  shows within ``ping_interval + ping_timeout``;
- ``command_timeout`` (10 s here; any statement), ``connect_timeout`` (10 s),
  ``idle_timeout`` (60 s; pooled connections idle that long are closed);
- TLS and the server session, passed to asyncpg as they are: ``sslmode``
  (``disable``, ``allow``, ``prefer``, ``require``, ``verify-ca``, ``verify-full``),
  ``sslrootcert``, ``sslcert``, ``sslkey``, ``sslpassword``, ``passfile``,
  ``target_session_attrs``, ``application_name``.

The password comes from the URL, a ``passfile`` or asyncpg's standard chain
(``PGPASSWORD``, ``~/.pgpass``); it is never shown (``repr`` and errors mask it).
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import urlsplit

from eventbus.errors import InvalidURLError, mask_url
from eventbus.sqlbroker.settings import TIMEOUTS, SqlSettings, parse_url
from eventbus.url_options import OptionParser, choice, integer, query_pairs, seconds, text

PING_INTERVAL = 5.0
PING_TIMEOUT = 5.0
POOL_SIZE = 5
COMMAND_TIMEOUT = 10.0

DRIVER: dict[str, OptionParser] = {
    "sslmode": choice("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "sslrootcert": text,
    "sslcert": text,
    "sslkey": text,
    "sslpassword": text,
    "passfile": text,
    "target_session_attrs": choice("any", "primary", "standby", "prefer-standby",
                                   "read-write", "read-only"),
    "application_name": text,
}
"""asyncpg's own DSN options that are passed through (anything else asyncpg would take as
a server setting, silently: refused here instead)."""


def parse_settings(url: str) -> SqlSettings:
    """Validate a ``postgres://`` URL; InvalidURLError names the option and what is allowed."""
    timeouts = {name: TIMEOUTS[name] for name in
                ("command_timeout", "connect_timeout", "idle_timeout", "ping_timeout")}
    settings = parse_url(
        url, dialect="postgres", name="PostgreSQL", where=_where,
        own={"pool_size": integer(1, 100), "ping_interval": seconds(0.1, inclusive=True)},
        passthrough={**timeouts, **DRIVER}, secrets=("sslpassword",))
    if "command_timeout" not in {key for key, _ in query_pairs(url.partition("?")[2])}:
        # A broker's statements are short: one stuck on a dead link gives up sooner
        # than the database layer's default (30 s).
        joiner = "&" if "?" in settings.database_url else "?"
        settings = replace(settings, database_url=(
            f"{settings.database_url}{joiner}command_timeout={COMMAND_TIMEOUT:g}"))
    return settings


def _where(base: str) -> str:
    try:
        parts = urlsplit(base)
        port = parts.port or 5432
    except ValueError as exc:
        raise InvalidURLError(f"PostgreSQL URL {mask_url(base)} is malformed: {exc}; use "
                              "postgresql://user:password@host:5432/database") from None
    database = parts.path.lstrip("/") or "(the user's default database)"
    return f"PostgreSQL at {parts.hostname or 'localhost'}:{port}/{database}"
