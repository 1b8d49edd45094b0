"""URL options of the SQL brokers (``sqlite://``, ``postgres://``), parsed into one frozen object.

The options every SQL broker takes (``COMMON``), with their defaults:

- ``lease`` (30 s): how long a claimed message stays with its consumer unless the
  consumer renews it (every third of it, while the handler runs). A crashed
  consumer's messages come back after it.
- ``max_age`` (604800 s, seven days; ``inf`` keeps messages for ever) and
  ``max_messages`` (none): retention per topic, by age and by count; a message a
  group holds (in flight or waiting out a delay) is kept until it is settled.
- ``retention_interval`` (60 s): how often retention runs.
- ``max_message_bytes`` (1 MiB): the largest message (body plus headers).
- ``idle_poll`` (5 s): an idle subscription looks for work at least this often, in
  case a wake-up was missed.
- the shared options (:data:`eventbus.url_options.VOCABULARY`): ``start_from``
  (where a new group starts when its subscription does not say), ``client_name``
  (the consumers' name in the ``owner`` column of what they hold; PostgreSQL also
  shows it as the connection's ``application_name``), ``provision`` (true: the
  tables and topics are created on first use; false: a missing one is a
  :class:`~eventbus.errors.ProvisioningError`) and ``connect_timeout``.

Each dialect adds its own (see :mod:`eventbus.sqlbroker.sqlite` and the PostgreSQL
adapter's ``settings``), and the database layer's timeouts
(:mod:`eventbus.patterns.sql`) are passed through to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

from eventbus.adapter import StartFrom
from eventbus.errors import mask_url
from eventbus.url_options import OptionParser, integer, parse_options, query_pairs, seconds, shared

Dialect = Literal["sqlite", "postgres"]

MAX_MESSAGE_BYTES = 1024 * 1024
SEVEN_DAYS = 7 * 86_400.0

COMMON: dict[str, OptionParser] = {
    "lease": seconds(0.5, inclusive=True, allowed="must be a number of seconds >= 0.5"),
    "max_age": seconds(),
    "max_messages": integer(1),
    "retention_interval": seconds(0.1, inclusive=True),
    "max_message_bytes": integer(1, 256 * 1024 * 1024),
    "idle_poll": seconds(0.05, inclusive=True),
    **shared("start_from", "client_name", "provision"),
}

TIMEOUTS: dict[str, OptionParser] = {
    name: seconds(
        0.0, inclusive=True, allowed="must be zero (no limit) or a positive number of seconds"
    )
    for name in (
        "command_timeout",
        "connect_timeout",
        "idle_timeout",
        "ping_timeout",
        "busy_timeout",
    )
}
"""The database layer's own timeout options (:func:`eventbus.patterns.sql.split_options`)."""


@dataclass(frozen=True)
class SqlSettings:
    """Everything a SQL broker URL says, validated. ``repr`` never shows a password."""

    dialect: Dialect
    masked_url: str
    database_url: str = field(repr=False)
    """What :meth:`eventbus.patterns.sql.Database.connect` is given: the URL without
    the broker's own options (it may hold the password: never shown)."""
    where: str = ""
    """The database as messages name it (a file path, or host:port/database)."""
    lease: float = 30.0
    max_age: float = SEVEN_DAYS
    max_messages: int | None = None
    retention_interval: float = 60.0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    idle_poll: float = 5.0
    connect_timeout: float = 10.0
    start_from: StartFrom | None = None
    client_name: str | None = None
    provision: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)
    """The dialect's own options (``poll_interval``, ``ping_interval``...)."""

    def option(self, name: str, default: Any) -> Any:
        """The dialect option ``name``, or ``default`` when the URL does not set it."""
        return self.extra.get(name, default)


def parse_url(
    url: str,
    *,
    dialect: Dialect,
    name: str,
    where: Callable[[str], str],
    own: Mapping[str, OptionParser],
    passthrough: Mapping[str, OptionParser],
    secrets: tuple[str, ...] = (),
) -> SqlSettings:
    """Split ``url`` into the broker's options (:data:`COMMON` and ``own``) and the
    database URL (its path plus the ``passthrough`` options, which the driver or
    the database layer reads). Unknown options, options given twice and bad values
    raise :class:`~eventbus.errors.InvalidURLError` naming them."""
    shown = mask_url(url)
    base, _, query = url.partition("?")
    pairs = query_pairs(query, plus_is_space=False)
    parsers = {**COMMON, **own, **passthrough}
    values = parse_options(pairs, parsers, name=name, shown=shown, secrets=secrets)
    kept = [(key, raw) for key, raw in pairs if key in passthrough]
    database_url = base + (f"?{urlencode(kept)}" if kept else "")
    common = {key: values[key] for key in COMMON if key in values}
    extra = {key: values[key] for key in own if key in values}
    # 0 turns a limit off, as everywhere in the database layer.
    connect = values.get("connect_timeout", 10.0) or math.inf
    if "max_age" in common and math.isinf(common["max_age"]):
        common["max_age"] = math.inf
    return SqlSettings(
        dialect=dialect,
        masked_url=shown,
        database_url=database_url,
        where=where(base),
        connect_timeout=connect,
        extra=extra,
        **common,
    )
