"""``eventbus publish``: one event onto a real broker, data inline, from a file or stdin."""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

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


def check_type(event_type: str, app_target: str, url: str | None) -> type[Message]:
    """The class the user's module registers for ``event_type``; exits with close
    matches when there is none."""
    bus = load_bus(app_target, url)
    cls = bus.registry.get(event_type)
    if cls is not None:
        return cls
    types = known_types(bus)
    close = difflib.get_close_matches(event_type, types, n=3, cutoff=0.5)
    hint = (
        f"did you mean {', '.join(close)}?"
        if close
        else f"known types: {', '.join(types[:10])}"
        if types
        else "it registers none"
    )
    fail(f"unknown event type {event_type!r} in {app_target}: {hint}", EXIT_USAGE)


def check_data(cls: type[Message], event_type: str, payload: bytes) -> None:
    """Exit, one line naming each wrong field, when ``payload`` does not validate as ``cls``."""
    try:
        cls.model_validate_json(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc'])) or '(data)'}: {error['msg']}"
            for error in exc.errors()
        )
        fail(f"--data does not fit {cls.__name__} ({event_type}): {problems}", EXIT_USAGE)


def publish(
    event_type: Annotated[str, typer.Option("--type", "-t", help="CloudEvents type")],
    topic: Annotated[
        str | None,
        typer.Argument(help="Topic to publish to (with --app: default the class's topic)"),
    ] = None,
    data: Annotated[
        str, typer.Option("--data", "-d", help="JSON data, @file.json, or - for stdin")
    ] = "{}",
    key: Annotated[str | None, typer.Option(help="Partition key")] = None,
    source: Annotated[str, typer.Option(help="CloudEvents source")] = "eventbus-cli",
    version: Annotated[
        int | None, typer.Option(help="Data version (default: the class's with --app, else 1)")
    ] = None,
    app_target: Annotated[
        str | None,
        typer.Option(
            "--app",
            help="module:attribute of your EventBus; --type and --data "
            "are then checked against the class it registers for the type, whose "
            "topic and version are the defaults",
        ),
    ] = None,
    url: UrlOption = None,
) -> None:
    """Publish one event with JSON data; prints its id once the broker confirmed it."""
    if topic is None and app_target is None:
        fail(
            "give the topic to publish to, or --app module:bus to publish to the topic of "
            "the class registered for --type",
            EXIT_USAGE,
        )
    broker = resolve_url(url)
    refuse_in_process(broker, "publish")
    payload = read_data(data)
    if app_target is not None:
        cls = check_type(event_type, app_target, url)
        check_data(cls, event_type, payload)
        default = cls.default_topic()
        if topic is not None and topic != default:
            typer.echo(
                f"warning: {cls.__name__} is published to {default!r} by default, "
                f"where handlers subscribed to the class listen; publishing to "
                f"{topic!r} as asked",
                err=True,
            )
        topic = topic or default
        version = cls.data_version() if version is None else version
    assert topic is not None  # given, or the class's (checked above)
    envelope = Envelope.create(
        type=event_type, source=source, data=payload, dataversion=version or 1, partitionkey=key
    )
    envelope = envelope.evolve(correlationid=envelope.id)

    async def go() -> None:
        async with connected(broker) as adapter:
            await adapter.publish(topic, [envelope])

    run_async(go)
    typer.echo(envelope.id)
