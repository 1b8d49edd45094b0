"""The defaults an adapter page states are the code's: a settings table row whose first
cell names a field of the adapter's settings class, and whose default cell starts with
a value, must state that field's default (a page once said Kafka's ``commit_every``
defaults to 1000 while the code said 32).

A cell is read by its first word: a number (units such as ``s`` and ``MiB`` read as
such), a flag, or a word where the code's default is one (``binary``, ``classic``).
Where the code says ``None``, the page's prose (``—``, ``none``, ``the host name``)
is left alone."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from eventbus_kafka.settings import KafkaSettings
from eventbus_nats.settings import NatsSettings
from eventbus_postgres import settings as postgres
from eventbus_rabbitmq.settings import RabbitMQSettings
from eventbus_redis.settings import RedisSettings
from eventbus_sqs.settings import SqsSettings

from eventbus.patterns.sql import Timeouts
from eventbus.sqlbroker import sqlite
from eventbus.sqlbroker.settings import SqlSettings

DOCS = Path(__file__).resolve().parent.parent / "docs" / "adapters"


def defaults_of(settings: type) -> dict[str, Any]:
    """Each field of a settings dataclass with the default it has."""
    found = {}
    for field in dataclasses.fields(settings):
        if field.default is not dataclasses.MISSING:
            found[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            found[field.name] = field.default_factory()
    return found


# The SQL brokers' options live in three places: the broker's settings, the database
# layer's timeouts and the dialect's own constants.
SQL = {
    **{f"{name}_timeout": value for name, value in defaults_of(Timeouts).items()},
    **defaults_of(SqlSettings),
}
PAGES: dict[str, dict[str, Any]] = {
    "kafka.md": defaults_of(KafkaSettings),
    "nats.md": defaults_of(NatsSettings),
    "postgres.md": {
        **SQL,
        "pool_size": postgres.POOL_SIZE,
        "ping_interval": postgres.PING_INTERVAL,
        "ping_timeout": postgres.PING_TIMEOUT,
        "command_timeout": postgres.COMMAND_TIMEOUT,
    },
    "rabbitmq.md": defaults_of(RabbitMQSettings),
    "redis.md": defaults_of(RedisSettings),
    "sqlite.md": {
        **SQL,
        "poll_interval": sqlite.POLL_INTERVAL,
        "health_timeout": sqlite.HEALTH_TIMEOUT,
    },
    "sqs.md": defaults_of(SqsSettings),
}
HEADER = re.compile(r"^\| [^|]+ \| default \|")
ROW = re.compile(r"^\| `([a-z_]+)` \| ([^|]+) \|")
PROSE = re.compile(r"`([a-z_]+)` \((?:s, )?default ([^);]+)")
UNITS = {"s": 1, "KiB": 1024, "MiB": 1024**2}
VALUE = re.compile(r"^`?(-?[0-9][0-9.,]*|true|false|True|False)`?(?: ?(s|KiB|MiB)\b)?")


def stated(cell: str) -> Any:
    """The value a default cell starts with, or ``None`` when it starts with prose."""
    found = VALUE.match(cell.strip())
    if found is None:
        return None
    text, unit = found.group(1), found.group(2)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "," in text:
        return tuple(float(part) for part in text.split(","))
    number = float(text) * UNITS.get(unit or "s", 1)
    return number


def same(page_value: Any, value: Any) -> bool:
    if isinstance(page_value, bool) or isinstance(value, bool):
        return page_value is value
    if isinstance(page_value, tuple):
        return isinstance(value, tuple | list) and page_value == tuple(float(v) for v in value)
    if isinstance(value, int | float):
        return bool(abs(page_value - float(value)) < 1e-9)
    return False


def said(page: str) -> list[tuple[str, str]]:
    """(option, what is said of its default): the rows of tables with a ``default``
    column, and prose of the form ``name`` (s, default N)."""
    found: list[tuple[str, str]] = []
    in_table = False
    text = (DOCS / page).read_text(encoding="utf-8")
    for line in text.splitlines():
        if HEADER.match(line):
            in_table = True
        elif not line.startswith("|"):
            in_table = False
        elif in_table and (match := ROW.match(line)):
            found.append((match.group(1), match.group(2).strip()))
    found += [(m.group(1), m.group(2).strip()) for m in PROSE.finditer(" ".join(text.split()))]
    return found


def first_word(cell: str) -> str:
    return cell.split()[0].strip("`") if cell.split() else ""


def rows(page: str, defaults: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """(name, cell, code default) of every option the page gives a default value: a
    number or a flag, or a word where the code's default is a word."""
    return [
        (name, cell, defaults[name])
        for name, cell in said(page)
        if name in defaults
        and (stated(cell) is not None or (isinstance(defaults[name], str) and defaults[name]))
    ]


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_default_a_page_states_is_the_codes(page: str) -> None:
    wrong = [
        f"`{name}`: the page says {cell!r}, the code {value!r}"
        for name, cell, value in rows(page, PAGES[page])
        if not (first_word(cell) == value if isinstance(value, str) else same(stated(cell), value))
    ]
    assert not wrong, f"docs/adapters/{page}: " + "; ".join(wrong)


def test_the_check_reads_the_tables() -> None:
    """Each page has rows the check compares (a table it cannot read checks nothing)."""
    for page, defaults in PAGES.items():
        assert len(rows(page, defaults)) >= 4, page


def test_a_stale_default_is_caught() -> None:
    """The row that was wrong, as it was, fails the comparison."""
    assert not same(stated("1000"), PAGES["kafka.md"]["commit_every"])
    assert same(stated("32"), PAGES["kafka.md"]["commit_every"])
    assert stated("604800 s (7 days), `inf` keeps all") == 604800
    assert stated("1 MiB (`max_message_bytes`)") == 1024**2
    assert stated("— ") is None and stated("`classic`") is None
    assert first_word("`classic`") == "classic" != first_word("quorum (see above)")
