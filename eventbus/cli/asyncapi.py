"""``eventbus asyncapi module:bus``: print (or write) the service's AsyncAPI 3.0 document."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Annotated

import typer

from eventbus.asyncapi import asyncapi_document
from eventbus.cli._common import EXIT_UNKNOWN_SCHEME, EXIT_USAGE, UrlOption, fail, load_bus

FORMATS = ("yaml", "json")
YAML_EXTRA = 'pip install "eventbus[asyncapi]"'


def asyncapi(
    target: Annotated[str, typer.Argument(help="module:attribute of the EventBus, e.g. app:bus")],
    format: Annotated[
        str, typer.Option("--format", "-f", help="yaml or json", case_sensitive=False),
    ] = "yaml",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout"),
    ] = None,
    title: Annotated[
        str | None, typer.Option("--title", help="info.title; defaults to the bus's source"),
    ] = None,
    app_version: Annotated[
        str, typer.Option("--app-version", help="info.version: your API's version"),
    ] = "1.0.0",
    url: UrlOption = None,
) -> None:
    """Print the service's AsyncAPI 3.0 document: channels from its topics, messages from
    its event classes, operations from its subscriptions and from what it declares it
    publishes (bus.publishes), the server from the URL without credentials."""
    kind = format.lower()
    if kind not in FORMATS:
        fail(f"--format {format!r} is not one of {', '.join(FORMATS)}", EXIT_USAGE)
    bus = load_bus(target, url)
    module = importlib.import_module(target.partition(":")[0])  # imported by load_bus
    summary = (module.__doc__ or "").strip().split("\n\n", 1)[0]
    document = asyncapi_document(bus, title=title, version=app_version,
                                 description=summary or None)
    if kind == "json":
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    else:
        try:
            import yaml  # type: ignore[import-untyped]
        except ModuleNotFoundError:
            fail(f"--format yaml needs PyYAML, which is not installed: {YAML_EXTRA} "
                 "(or use --format json)", EXIT_UNKNOWN_SCHEME)
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}", err=True)
