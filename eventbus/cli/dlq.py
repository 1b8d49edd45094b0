"""``eventbus dlq``: list, show, replay and purge dead letters on a real broker."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from eventbus.cli._common import (
    EXIT_NOT_FOUND,
    UrlOption,
    connected,
    fail,
    refuse_in_process,
    resolve_url,
    run_async,
)
from eventbus.deadletters import DeadLetters, ListedDeadLetter, dlq_topic
from eventbus.envelope import format_time

dlq_app = typer.Typer(help="Inspect, replay and purge dead letters.", no_args_is_help=True)

PROGRESS_FROM = 10
"""Replays and purges of at least this many letters show a progress bar."""

Topic = Annotated[str, typer.Argument(help="Original topic")]
Group = Annotated[str, typer.Argument(help="Consumer group whose dead letters these are")]
Ids = Annotated[
    list[str] | None,
    typer.Option("--id", help="Only this letter (event id or DLQ position); repeatable"),
]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")]
Limit = Annotated[int | None, typer.Option(help="At most this many")]


def letter_json(letter: ListedDeadLetter) -> dict[str, Any]:
    """Everything about a letter, JSON-ready: data as text when it is UTF-8, else base64."""
    data = letter.envelope.data
    try:
        shown, encoding = data.decode("utf-8"), "text"
    except UnicodeDecodeError:
        shown, encoding = base64.b64encode(data).decode("ascii"), "base64"
    return {
        "id": letter.envelope.id,
        "position": letter.message_id,
        "state": letter.state,
        "replayed": letter.replayed,
        "purged": letter.purged,
        "type": letter.envelope.type,
        "source": letter.envelope.source,
        "time": format_time(letter.envelope.time),
        "correlationid": letter.envelope.correlationid,
        "topic": letter.topic,
        "group": letter.group,
        "attempts": letter.attempts,
        "failed_at": letter.failed_at,
        "reason": letter.reason,
        "exception": letter.exception,
        "message": letter.message,
        "traceback": letter.traceback,
        "dropped": list(letter.dropped),
        "replayable": letter.replayable,
        "datacontenttype": letter.envelope.datacontenttype,
        "data": shown,
        "data_encoding": encoding,
    }


def _broker(url: str | None, command: str) -> str:
    broker = resolve_url(url)
    refuse_in_process(broker, f"dlq {command}")
    return broker


@dlq_app.command("list")
def dlq_list(
    topic: Topic,
    group: Group,
    limit: Annotated[int, typer.Option(help="At most this many")] = 100,
    show_all: Annotated[
        bool, typer.Option("--all", "-a", help="Also letters already replayed or purged")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="One JSON object per line, with data, reason and traceback"),
    ] = False,
    url: UrlOption = None,
) -> None:
    """List dead letters of TOPIC for GROUP with why each failed (--all: replayed, purged too)."""
    broker = _broker(url, "list")

    async def go() -> list[ListedDeadLetter]:
        async with connected(broker) as adapter:
            return await DeadLetters(adapter).list(
                topic, group, limit=None, include_replayed=True, include_purged=True
            )

    letters = run_async(go)
    shown = [letter for letter in letters if show_all or letter.state == "pending"][:limit]
    for letter in shown:
        if as_json:
            typer.echo(json.dumps(letter_json(letter)))
        else:
            state = "" if letter.state == "pending" else f"[{letter.state}]  "
            typer.echo(
                f"{letter.envelope.id}  {letter.envelope.type}  "
                f"attempts={letter.attempts}  {letter.failed_at}  {state}{letter.reason}"
            )
    counts = {
        state: sum(1 for x in letters if x.state == state)
        for state in ("pending", "replayed", "purged")
    }
    hidden = (
        ""
        if show_all or not (counts["replayed"] or counts["purged"])
        else ("; replayed and purged ones hidden, --all shows them")
    )
    typer.echo(
        f"{len(shown)} of {len(letters)} dead letter(s) on {topic}/{group} shown "
        f"({counts['pending']} pending, {counts['replayed']} replayed, "
        f"{counts['purged']} purged{hidden})",
        err=True,
    )


@dlq_app.command("show")
def dlq_show(
    topic: Topic,
    group: Group,
    letter_id: Annotated[str, typer.Argument(metavar="ID", help="Event id or DLQ position")],
    as_json: Annotated[bool, typer.Option("--json", help="As JSON")] = False,
    url: UrlOption = None,
) -> None:
    """Show one dead letter in full: reason, traceback, attributes and data."""
    broker = _broker(url, "show")

    async def go() -> list[ListedDeadLetter]:
        async with connected(broker) as adapter:
            return await DeadLetters(adapter).show(topic, group, letter_id)

    letters = run_async(go)
    if not letters:
        fail(
            f"no dead letter {letter_id!r} on {dlq_topic(topic, group)!r}; "
            f"`eventbus dlq list {topic} {group} --all` lists them",
            EXIT_NOT_FOUND,
        )
    for letter in letters:
        doc = letter_json(letter)
        if as_json:
            typer.echo(json.dumps(doc, indent=2))
            continue
        traceback, data = doc.pop("traceback"), doc.pop("data")
        for name, value in doc.items():
            typer.echo(f"{name + ':':17}{value}")
        typer.echo(f"data:\n{data}\ntraceback:\n{traceback or '(none kept)'}")


def _confirm(question: str, yes: bool) -> None:
    if not yes and not typer.confirm(question, default=False, err=True):
        raise typer.Abort()


async def _with_progress(
    total: int, label: str, act: Callable[[Callable[[int, int], None]], Any]
) -> int:
    """Run ``act(progress)`` with a bar on stderr when ``total`` is large."""
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=total < PROGRESS_FROM,
    ) as bar:
        task = bar.add_task(label, total=total)

        def advance(done: int, of: int) -> None:
            bar.update(task, completed=done, total=of)

        count: int = await act(advance)
        return count


async def _plan(
    adapter: Any, topic: str, group: str, ids: list[str] | None
) -> list[ListedDeadLetter]:
    """Every letter of the DLQ (for --id lookups, replayed/purged ones too)."""
    letters = await DeadLetters(adapter).list(topic, group, limit=None, include_purged=True)
    if ids:
        missing = [i for i in ids if not any(letter.matches(i) for letter in letters)]
        if missing:
            fail(
                f"no dead letter {', '.join(map(repr, missing))} on "
                f"{dlq_topic(topic, group)!r}; `eventbus dlq list {topic} {group} --all` "
                "lists them",
                EXIT_NOT_FOUND,
            )
        letters = [letter for letter in letters if any(letter.matches(i) for i in ids)]
    return letters


@dlq_app.command("replay")
def dlq_replay(
    topic: Topic,
    group: Group,
    ids: Ids = None,
    limit: Limit = None,
    to_topic: Annotated[str | None, typer.Option(help="Publish here instead")] = None,
    whole_topic: Annotated[
        bool,
        typer.Option(
            "--whole-topic",
            help="Publish to the topic (every group sees it again), even where the broker "
            "could deliver to the failed group alone",
        ),
    ] = False,
    yes: Yes = False,
    url: UrlOption = None,
) -> None:
    """Publish dead letters (all pending, or --id ones) back, once each: to the group
    that failed them where the broker can route to one group (memory, Kafka), else to
    their whole topic."""
    broker = _broker(url, "replay")

    async def go() -> int:
        async with connected(broker) as adapter:
            letters = await _plan(adapter, topic, group, ids)
            todo = [x for x in letters if x.state == "pending" and x.replayable][:limit]
            if not todo:
                skipped = len(letters) - len(todo)
                typer.echo(
                    f"nothing to replay on {topic}/{group}"
                    + (
                        f" ({skipped} already replayed, purged or not replayable)"
                        if skipped
                        else ""
                    ),
                    err=True,
                )
                return 0
            where = to_topic or todo[0].topic or topic
            if not whole_topic and to_topic is None and adapter.capabilities.group_route:
                where = f"group {todo[0].group or group} of {where}"
            await asyncio.to_thread(
                _confirm, f"Replay {len(todo)} dead letter(s) of {topic}/{group} to {where}?", yes
            )
            return await _with_progress(
                len(todo),
                "replaying",
                lambda progress: DeadLetters(adapter).replay(
                    topic,
                    group,
                    limit=limit,
                    to_topic=to_topic,
                    ids=ids,
                    progress=progress,
                    to_group=False if whole_topic else None,
                ),
            )

    count = run_async(go)
    typer.echo(f"replayed {count} dead letter(s) from {topic}/{group}")


@dlq_app.command("purge")
def dlq_purge(
    topic: Topic,
    group: Group,
    ids: Ids = None,
    limit: Limit = None,
    yes: Yes = False,
    url: UrlOption = None,
) -> None:
    """Give up on dead letters (all, or --id ones): they are no longer listed or replayed.

    On a log broker (Kafka) they are marked purged and stay on the DLQ topic until its
    retention removes them; on a queue broker they are consumed.
    """
    broker = _broker(url, "purge")

    async def go() -> int:
        async with connected(broker) as adapter:
            letters = await _plan(adapter, topic, group, ids)
            todo = [x for x in letters if not x.purged][:limit]
            if not todo:
                typer.echo(f"nothing to purge on {topic}/{group}", err=True)
                return 0
            await asyncio.to_thread(
                _confirm,
                f"Purge {len(todo)} dead letter(s) of {topic}/{group}? They will "
                "not be listed or replayed again.",
                yes,
            )
            return await _with_progress(
                len(todo),
                "purging",
                lambda progress: DeadLetters(adapter).purge(
                    topic, group, limit=limit, ids=ids, progress=progress
                ),
            )

    count = run_async(go)
    typer.echo(f"purged {count} dead letter(s) from {topic}/{group}")
