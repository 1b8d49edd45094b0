"""``eventbus publish``: one event onto a real broker, data inline, from a file or stdin."""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from eventbus.bus import EventBus
from eventbus.cli._common import (
    EXIT_USAGE,
    UrlOption,
    connected,
    fail,
    load_bus,
    refuse_in_process,
    resolve_url,
    run_async,
)
from eventbus.envelope import Envelope
from eventbus.events import Message


def read_data(data: str) -> bytes:
    """``--data``: JSON text, ``@path`` (a file) or ``-`` (stdin); checked to be JSON."""
    if data == "-":
        raw, origin = sys.stdin.buffer.read(), "stdin"
    elif data.startswith("@"):
        path = Path(data[1:])
        try:
            raw, origin = path.read_bytes(), str(path)
        except OSError as exc:
            fail(f"--data {data}: cannot read {path}: {exc.strerror or exc}", EXIT_USAGE)
    else:
        raw, origin = data.encode(), "--data"
    try:
        json.loads(raw)
    except ValueError as exc:
        fail(f"--data is not valid JSON ({origin}): {exc}", EXIT_USAGE)
    return raw


def known_types(bus: EventBus) -> list[str]:
    """Event types of every Event/Command class the bus's registry knows by name."""
    found: set[str] = set()
    pending = list(Message.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        try:
            name = cls.event_type()
        except Exception:  # an abstract base without a type of its own
            continue
        if bus.registry.get(name) is cls:
            found.add(name)
    return sorted(found)


def check_type(event_type: str, app_target: str, url: str | None) -> None:
    """Exit with close matches when ``event_type`` is not registered by the user's module."""
    bus = load_bus(app_target, url)
    if bus.registry.get(event_type) is not None:
        return
    types = known_types(bus)
    close = difflib.get_close_matches(event_type, types, n=3, cutoff=0.5)
    hint = (f"did you mean {', '.join(close)}?" if close
            else f"known types: {', '.join(types[:10])}" if types else "it registers none")
    fail(f"unknown event type {event_type!r} in {app_target}: {hint}", EXIT_USAGE)


def publish(
    topic: Annotated[str, typer.Argument(help="Topic to publish to")],
    event_type: Annotated[str, typer.Option("--type", "-t", help="CloudEvents type")],
    data: Annotated[
        str, typer.Option("--data", "-d", help="JSON data, @file.json, or - for stdin")
    ] = "{}",
    key: Annotated[str | None, typer.Option(help="Partition key")] = None,
    source: Annotated[str, typer.Option(help="CloudEvents source")] = "eventbus-cli",
    version: Annotated[int, typer.Option(help="Data version")] = 1,
    app_target: Annotated[
        str | None,
        typer.Option("--app", help="module:attribute of your EventBus; --type is then "
                     "checked against the event types it registers"),
    ] = None,
    url: UrlOption = None,
) -> None:
    """Publish one event with JSON data; prints its id once the broker confirmed it."""
    broker = resolve_url(url)
    refuse_in_process(broker, "publish")
    payload = read_data(data)
    if app_target is not None:
        check_type(event_type, app_target, url)
    envelope = Envelope.create(
        type=event_type, source=source, data=payload, dataversion=version, partitionkey=key,
    )
    envelope = envelope.evolve(correlationid=envelope.id)

    async def go() -> None:
        async with connected(broker) as adapter:
            await adapter.publish(topic, [envelope])

    run_async(go)
    typer.echo(envelope.id)
