"""The ``eventbus`` command: run a service, publish an event, inspect and replay dead letters,
lint a service (``check``), migrate the patterns' tables (``db migrate``), describe a
service in AsyncAPI (``asyncapi``).

Also ``python -m eventbus``. Every expected failure prints one ``error: ...`` line
and exits with its own code (see ``eventbus.cli._common``).
"""

from __future__ import annotations

from typing import Annotated

try:
    import rich  # noqa: F401  (the dlq commands' console and progress bars)
    import typer
except ModuleNotFoundError as missing:  # both come with the `cli` extra, not the library
    raise ModuleNotFoundError(
        f"eventbus.cli needs typer and rich, which the library alone does not install "
        f'({missing.name} is missing): pip install "eventbus[cli]"',
        name=missing.name,
    ) from missing

import eventbus
from eventbus.cli._common import load_bus
from eventbus.cli.asyncapi import asyncapi
from eventbus.cli.check import check
from eventbus.cli.db import db_app
from eventbus.cli.dlq import dlq_app
from eventbus.cli.publish import publish
from eventbus.cli.run import run

__all__ = ["app", "load_bus", "main"]

app = typer.Typer(
    help="eventbus: broker-agnostic event messaging.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command()(run)
app.command()(publish)
app.add_typer(dlq_app, name="dlq")
app.command()(check)
app.add_typer(db_app, name="db")
app.command()(asyncapi)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"eventbus {eventbus.__version__}")  # the one version source
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit"
        ),
    ] = False,
) -> None:
    """eventbus: broker-agnostic event messaging."""


def main() -> None:
    """Console entry point."""
    app(prog_name="eventbus")
