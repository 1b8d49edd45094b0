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
- TLS with the shared names: ``tls_ca`` (the CA file), ``tls_cert`` and ``tls_key``
  (a client certificate), ``tls_verify`` (true: ``sslmode=verify-full``, the default
  once a ``tls_*`` option is given; false: ``sslmode=require``, encrypted but the
  server not verified); ``client_name`` is the connection's ``application_name``;
- libpq's own names, passed to asyncpg as they are, for what the shared ones do not
  say (or for a URL written for psql): ``sslmode`` (``disable``, ``allow``,
  ``prefer``, ``require``, ``verify-ca``, ``verify-full``), ``sslrootcert``,
  ``sslcert``, ``sslkey``, ``sslpassword``, ``passfile``, ``target_session_attrs``,
  ``application_name``. A shared name and its libpq twin in one URL is refused.

The password comes from the URL, a ``passfile`` or asyncpg's standard chain
(``PGPASSWORD``, ``~/.pgpass``); it is never shown (``repr`` and errors mask it).
"""

from __future__ import annotations

from dataclasses import replace
from urllib.parse import urlencode, urlsplit

from eventbus.errors import InvalidURLError, mask_url
from eventbus.sqlbroker.settings import TIMEOUTS, SqlSettings, parse_url
from eventbus.url_options import (
    TLS_OPTIONS,
    OptionParser,
    check_tls,
    choice,
    integer,
    query_pairs,
    seconds,
    shared,
    text,
)

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
    "target_session_attrs": choice(
        "any", "primary", "standby", "prefer-standby", "read-write", "read-only"
    ),
    "application_name": text,
}
"""asyncpg's own DSN options that are passed through (anything else asyncpg would take as
a server setting, silently: refused here instead)."""


def parse_settings(url: str) -> SqlSettings:
    """Validate a ``postgres://`` URL; InvalidURLError names the option and what is allowed."""
    timeouts = {
        name: TIMEOUTS[name]
        for name in ("command_timeout", "connect_timeout", "idle_timeout", "ping_timeout")
    }
    settings = parse_url(
        url,
        dialect="postgres",
        name="PostgreSQL",
        where=_where,
        own={
            "pool_size": integer(1, 100),
            "ping_interval": seconds(0.1, inclusive=True),
            **shared(*TLS_OPTIONS),
        },
        passthrough={**timeouts, **DRIVER},
        secrets=("sslpassword",),
    )
    settings = _shared_to_libpq(url, settings)
    if "command_timeout" not in {key for key, _ in query_pairs(url.partition("?")[2])}:
        # A broker's statements are short: one stuck on a dead link gives up sooner
        # than the database layer's default (30 s).
        joiner = "&" if "?" in settings.database_url else "?"
        settings = replace(
            settings,
            database_url=(f"{settings.database_url}{joiner}command_timeout={COMMAND_TIMEOUT:g}"),
        )
    return settings


# The shared option -> the libpq option it sets.
_TWINS = {
    "tls_ca": "sslrootcert",
    "tls_cert": "sslcert",
    "tls_key": "sslkey",
    "tls_verify": "sslmode",
    "client_name": "application_name",
}


def _shared_to_libpq(url: str, settings: SqlSettings) -> SqlSettings:
    """Write the shared TLS options and client_name into the DSN as libpq's names."""
    given = {key for key, _ in query_pairs(url.partition("?")[2])}
    shown = settings.masked_url
    values = {**settings.extra, "client_name": settings.client_name}
    values = {key: value for key, value in values.items() if key in _TWINS and key in given}
    for option in values:
        if _TWINS[option] in given:
            raise InvalidURLError(
                f"PostgreSQL URL {shown!r} gives both {option} and {_TWINS[option]}, which "
                f"say the same thing; keep {option} (the name every eventbus adapter takes)"
            )
    # TLS is selected by any tls_* option here (libpq has no scheme for it).
    check_tls(values, tls=True, name="PostgreSQL", shown=shown, use="")
    added: list[tuple[str, str]] = []
    for option in ("tls_ca", "tls_cert", "tls_key", "client_name"):
        if option in values:
            added.append((_TWINS[option], str(values[option])))
    if any(option in values for option in TLS_OPTIONS) and "sslmode" not in given:
        added.append(("sslmode", "require" if values.get("tls_verify") is False else "verify-full"))
    if not added:
        return settings
    joiner = "&" if "?" in settings.database_url else "?"
    extra = {key: value for key, value in settings.extra.items() if key not in TLS_OPTIONS}
    return replace(
        settings, database_url=f"{settings.database_url}{joiner}{urlencode(added)}", extra=extra
    )


def _where(base: str) -> str:
    try:
        parts = urlsplit(base)
        port = parts.port or 5432
    except ValueError as exc:
        raise InvalidURLError(
            f"PostgreSQL URL {mask_url(base)} is malformed: {exc}; use "
            "postgresql://user:password@host:5432/database"
        ) from None
    database = parts.path.lstrip("/") or "(the user's default database)"
    return f"PostgreSQL at {parts.hostname or 'localhost'}:{port}/{database}"
