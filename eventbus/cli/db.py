"""``eventbus db migrate URL``: bring the patterns' tables of a database to this
eventbus's schema (see :mod:`eventbus.patterns.migrations`)."""

from __future__ import annotations

import os
from typing import Annotated
from urllib.parse import urlsplit

import typer

from eventbus.cli._common import EXIT_NOT_FOUND, EXIT_USAGE, fail, run_async
from eventbus.errors import mask_url
from eventbus.patterns.migrations import Migrated, migrate
from eventbus.patterns.schema import SCHEMA_VERSION
from eventbus.patterns.sql import Database

db_app = typer.Typer(
    help="The patterns' database tables (event store, outbox, sagas...).", no_args_is_help=True
)

DatabaseUrl = Annotated[
    str,
    typer.Argument(
        help="sqlite:///path/to/app.db or postgresql://user:password@host:5432/database",
        show_default=False,
    ),
]


def _check_sqlite_file(url: str) -> None:
    """Refuse a SQLite URL that would open a new, empty database instead of the app's."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        return  # Database.connect says what is wrong with it
    if scheme != "sqlite":
        return
    from eventbus.patterns._sqlite import sqlite_path

    path = sqlite_path(url)
    if path == ":memory:":
        fail(
            f"{url} is a private in-memory database that this command alone would see; "
            "give the file your service uses (sqlite:///path/to/app.db)",
            EXIT_USAGE,
        )
    if not os.path.exists(path):
        fail(
            f"no SQLite database at {os.path.abspath(path)} (from {mask_url(url)}); check "
            "the path (sqlite:///relative.db, sqlite:////absolute/path.db): this command "
            "does not create one",
            EXIT_NOT_FOUND,
        )


@db_app.command("migrate")
def migrate_command(url: DatabaseUrl) -> None:
    """Upgrade every eventbus table of the database to this version's schema, keeping
    the rows. Safe to run again, and from several instances at once (one migrates,
    the others wait and find nothing to do)."""
    _check_sqlite_file(url)

    async def go() -> list[Migrated]:
        async with await Database.connect(url, max_size=1) as db:
            return await migrate(db)

    results = run_async(go)
    where = mask_url(url)
    if not results:
        typer.echo(f"nothing to migrate: no eventbus tables in {where}")
        return
    for result in results:
        typer.echo(str(result))
    moved = sum(result.changed for result in results)
    typer.echo(
        f"{moved} of {len(results)} table group(s) migrated to schema version "
        f"{SCHEMA_VERSION} in {where}"
    )
