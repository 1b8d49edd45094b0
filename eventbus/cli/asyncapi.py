"""``eventbus asyncapi module:bus``: print (or write) the service's AsyncAPI 3.0 document."""

from __future__ import annotations

import asyncio
import importlib
import json
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from eventbus._asyncapi_html import render_html
from eventbus.asyncapi import asyncapi_document
from eventbus.cli._common import (
    EXIT_UNKNOWN_SCHEME,
    EXIT_USAGE,
    UrlOption,
    fail,
    load_bus,
    run_async,
)
from eventbus.probes import JSON, Answer, ProbeServer, Route

FORMATS = ("yaml", "json")
YAML_EXTRA = 'pip install "eventbus[asyncapi]"'


def asyncapi(
    target: Annotated[str, typer.Argument(help="module:attribute of the EventBus, e.g. app:bus")],
    format: Annotated[
        str, typer.Option("--format", "-f", help="yaml or json", case_sensitive=False)
    ] = "yaml",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file, not stdout")
    ] = None,
    title: Annotated[
        str | None, typer.Option("--title", help="info.title; defaults to the bus's source")
    ] = None,
    app_version: Annotated[
        str, typer.Option("--app-version", help="info.version: your API's version")
    ] = "1.0.0",
    url: UrlOption = None,
    docs_port: Annotated[
        int | None,
        typer.Option(
            "--docs-port",
            min=0,
            max=65535,
            show_default=False,
            help="Serve the document rendered as HTML (and as /asyncapi.json, "
            "/asyncapi.yaml) on this port until Ctrl-C",
        ),
    ] = None,
    docs_host: Annotated[
        str, typer.Option("--docs-host", help="Address --docs-port listens on")
    ] = "127.0.0.1",
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
    document = asyncapi_document(bus, title=title, version=app_version, description=summary or None)
    as_json = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    # The page serves YAML beside JSON when PyYAML is there; printing YAML needs it.
    as_yaml = _yaml(document, required=kind == "yaml" and docs_port is None)
    if docs_port is not None:
        run_async(lambda: _serve_docs(document, as_json, as_yaml, docs_host, docs_port))
        return
    text = as_json if kind == "json" else as_yaml
    assert text is not None
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output}", err=True)


def _yaml(document: dict[str, Any], required: bool) -> str | None:
    try:
        import yaml  # type: ignore[import-untyped]
    except ModuleNotFoundError:
        if not required:
            return None
        fail(
            f"--format yaml needs PyYAML, which is not installed: {YAML_EXTRA} "
            "(or use --format json)",
            EXIT_UNKNOWN_SCHEME,
        )
    text: str = yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    return text


async def _serve_docs(
    document: dict[str, Any], as_json: str, as_yaml: str | None, host: str, port: int
) -> None:
    """Serve the rendered page and the document until SIGINT/SIGTERM."""
    page = render_html(document).encode()

    def constant(ctype: str, body: bytes) -> Route:
        async def answer() -> Answer:
            return 200, ctype, body

        return answer

    routes = {
        "/": constant("text/html; charset=utf-8", page),
        "/asyncapi.json": constant(JSON, as_json.encode()),
    }
    if as_yaml is not None:
        routes["/asyncapi.yaml"] = constant("application/yaml", as_yaml.encode())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before serving: a page seen can be stopped
        loop.add_signal_handler(sig, stop.set)
    server = ProbeServer(routes, host, port, "--docs-port")
    try:
        bound = await server.start()
        typer.echo(
            f"serving the AsyncAPI document on http://{host}:{bound}/ (Ctrl-C stops)", err=True
        )
        await stop.wait()
    finally:
        await server.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
