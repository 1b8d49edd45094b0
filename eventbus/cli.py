"""The ``eventbus`` command: run a service, publish an event, inspect and replay dead letters."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from eventbus.bus import EventBus
from eventbus.dlq import DeadLetters
from eventbus.envelope import Envelope
from eventbus.errors import EventBusError, SubscriptionFailedError, mask_url
from eventbus.registry_adapters import adapter_from_url

app = typer.Typer(help="eventbus: broker-agnostic event messaging.", no_args_is_help=True)
dlq_app = typer.Typer(help="Inspect and replay dead letters.", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")

T = TypeVar("T")
UrlOption = Annotated[
    str | None,
    typer.Option("--url", "-u", help="Broker URL; defaults to $EVENTBUS_URL, else memory://"),
]


def _url(url: str | None) -> str:
    return url or os.environ.get("EVENTBUS_URL") or "memory://"


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _run(make: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(make())  # type: ignore[arg-type]
    except EventBusError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


def load_bus(target: str) -> EventBus:
    """Import ``module:attribute``; the attribute is an EventBus or a function returning one."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise typer.BadParameter(f"{target!r} is not module:attribute (e.g. app:bus)")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise typer.BadParameter(f"cannot import {module_name!r}: {exc}") from exc
    obj: Any = getattr(module, attribute, None)
    if obj is None:
        raise typer.BadParameter(f"module {module_name!r} has no attribute {attribute!r}")
    if callable(obj) and not isinstance(obj, EventBus):
        try:
            obj = obj()
        except TypeError as exc:
            raise typer.BadParameter(
                f"{target} is not an EventBus nor a function returning one ({exc})"
            ) from exc
    if not isinstance(obj, EventBus):
        raise typer.BadParameter(f"{target} is a {type(obj).__name__}, not an EventBus")
    return obj


@app.command()
def run(
    target: Annotated[str, typer.Argument(help="module:attribute of the EventBus, e.g. app:bus")],
    log_level: Annotated[str, typer.Option(help="Logging level")] = "INFO",
) -> None:
    """Run a service's subscriptions until SIGTERM/SIGINT, then shut down gracefully.

    Exits 0 after a signal, 1 when a subscription died for good (so a supervisor
    restarts the service instead of it sitting idle), 2 on a configuration error.
    """
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    bus = load_bus(target)
    typer.echo(f"running {target} on {mask_url(bus.adapter.url)}", err=True)
    try:
        asyncio.run(bus.run())
    except SubscriptionFailedError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from exc
    except EventBusError as exc:
        _fail(str(exc))


@app.command()
def publish(
    topic: Annotated[str, typer.Argument(help="Topic to publish to")],
    event_type: Annotated[str, typer.Option("--type", "-t", help="CloudEvents type")],
    data: Annotated[str, typer.Option("--data", "-d", help="JSON data")] = "{}",
    key: Annotated[str | None, typer.Option(help="Partition key")] = None,
    source: Annotated[str, typer.Option(help="CloudEvents source")] = "eventbus-cli",
    version: Annotated[int, typer.Option(help="Data version")] = 1,
    url: UrlOption = None,
) -> None:
    """Publish one event with JSON data; prints its id once the broker confirmed it."""
    try:
        json.loads(data)
    except ValueError as exc:
        _fail(f"--data is not valid JSON: {exc}")
    envelope = Envelope.create(
        type=event_type, source=source, data=data.encode(), dataversion=version,
        partitionkey=key,
    )
    envelope = envelope.evolve(correlationid=envelope.id)

    async def go() -> None:
        adapter = adapter_from_url(_url(url))
        await adapter.connect()
        try:
            await adapter.publish(topic, [envelope])
        finally:
            await adapter.close()

    _run(go)
    typer.echo(envelope.id)


@dlq_app.command("list")
def dlq_list(
    topic: Annotated[str, typer.Argument(help="Original topic")],
    group: Annotated[str, typer.Argument(help="Consumer group whose dead letters to list")],
    limit: Annotated[int, typer.Option(help="At most this many")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    url: UrlOption = None,
) -> None:
    """List dead letters of TOPIC for GROUP with the reason each failed."""

    async def go() -> list[dict[str, Any]]:
        adapter = adapter_from_url(_url(url))
        await adapter.connect()
        try:
            records = await DeadLetters(adapter).list(topic, group, limit=limit)
        finally:
            await adapter.close()
        return [
            {
                "id": r.envelope.id, "type": r.envelope.type, "reason": r.reason,
                "exception": r.exception, "attempts": r.attempts, "failed_at": r.failed_at,
                "correlationid": r.envelope.correlationid, "replayed": r.replayed,
            }
            for r in records
        ]

    rows = _run(go)
    for row in rows:
        if as_json:
            typer.echo(json.dumps(row))
        else:
            typer.echo(f"{row['id']}  {row['type']}  attempts={row['attempts']}  "
                       f"{row['failed_at']}  {'[replayed]  ' if row['replayed'] else ''}"
                       f"{row['reason']}")
    replayed = sum(1 for row in rows if row["replayed"])
    typer.echo(f"{len(rows)} dead letter(s) on {topic}/{group} ({replayed} replayed)", err=True)


@dlq_app.command("replay")
def dlq_replay(
    topic: Annotated[str, typer.Argument(help="Original topic")],
    group: Annotated[str, typer.Argument(help="Consumer group whose dead letters to replay")],
    limit: Annotated[int | None, typer.Option(help="At most this many")] = None,
    to_topic: Annotated[str | None, typer.Option(help="Publish here instead")] = None,
    url: UrlOption = None,
) -> None:
    """Publish dead letters back to their topic and remove them from the DLQ."""

    async def go() -> int:
        adapter = adapter_from_url(_url(url))
        await adapter.connect()
        try:
            return await DeadLetters(adapter).replay(topic, group, limit=limit, to_topic=to_topic)
        finally:
            await adapter.close()

    count = _run(go)
    typer.echo(f"replayed {count} dead letter(s) from {topic}/{group}")


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
