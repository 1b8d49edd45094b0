"""``eventbus check MODULE``: lint a service's events, commands and handlers.

One line per finding, ``path:line: CODE message``, and exit status 1 when there
are any (0 when clean), so it can gate CI::

    $ eventbus check shop.service
    shop/service.py:12: EB102 event OrderPlace is not named in the past tense ...

Codes:

- ``EB101`` a command named like an event (past tense): commands are imperative
  (``PlaceOrder``).
- ``EB102`` an event not named in the past tense (``OrderPlaced``, not ``PlaceOrder``).
- ``EB103`` an event or command payload over the size limits (``--max-fields``
  fields, or a JSON schema over ``--max-schema-bytes``): keep events small and
  reference other things by id.
- ``EB104`` a handler that publishes through the bus (``bus.publish``) rather
  than its context (``ctx.publish``), whose correlation and causation are explicit.
- ``EB105`` an event or command without an explicit ``version=`` (only with
  ``--require-versions``: a class without one is version 1, which is right until its
  schema first changes).
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from eventbus.cli._common import EXIT_IMPORT, _import, fail
from eventbus.events import Command, Event, Message

_WORD = re.compile(r"[A-Z]+[0-9]*(?![a-z])|[A-Z][a-z0-9]*|[a-z0-9]+")
# Words that end a type name without naming the action ("OrderPlacedEvent").
_SUFFIXES = frozenset(
    {"Event", "Events", "Integration", "Public", "Message", "Notification", "Command", "Cmd"}
)
_IRREGULAR_PAST = frozenset(
    {
        "Begun",
        "Bought",
        "Brought",
        "Built",
        "Caught",
        "Chosen",
        "Done",
        "Drawn",
        "Driven",
        "Eaten",
        "Fallen",
        "Fed",
        "Felt",
        "Found",
        "Forgotten",
        "Frozen",
        "Given",
        "Gone",
        "Got",
        "Grown",
        "Had",
        "Held",
        "Hidden",
        "Kept",
        "Known",
        "Laid",
        "Led",
        "Left",
        "Lent",
        "Lost",
        "Made",
        "Meant",
        "Met",
        "Paid",
        "Put",
        "Read",
        "Rewritten",
        "Ridden",
        "Risen",
        "Run",
        "Said",
        "Seen",
        "Sent",
        "Set",
        "Shown",
        "Shut",
        "Sold",
        "Spent",
        "Split",
        "Stolen",
        "Struck",
        "Sung",
        "Taken",
        "Taught",
        "Thrown",
        "Told",
        "Undone",
        "Upheld",
        "Withdrawn",
        "Won",
        "Written",
        "Quit",
        "Reset",
        "Cut",
        "Hit",
        "Bid",
        "Cast",
        "Shed",
        "Spread",
    }
)
_PUBLISHING = frozenset({"publish", "send", "publish_many"})
# The particle of a phrasal verb ("SignedUp", "LoggedIn", "CheckedOut"): the verb before
# it says the tense.
_PARTICLES = frozenset({"Up", "Down", "In", "Out", "On", "Off", "Over", "Back", "Away", "Through"})


@dataclass(frozen=True, slots=True, order=True)
class Finding:
    """One problem: where, its code and what to do."""

    path: str
    line: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.code} {self.message}"


def action_word(name: str) -> str:
    """The word of a type name that says what happened or is asked (suffixes dropped)."""
    words = _WORD.findall(name)
    while len(words) > 1 and (words[-1] in _SUFFIXES or re.fullmatch(r"V\d+", words[-1])):
        words.pop()
    if len(words) > 1 and words[-1] in _PARTICLES:
        words.pop()
    return words[-1] if words else name


def is_past_tense(word: str) -> bool:
    """Whether ``word`` reads as a past participle (``Placed``, ``Paid``, ``Sent``)."""
    return word.endswith("ed") or word in _IRREGULAR_PAST


def check_module(
    module: ModuleType,
    path: str,
    *,
    max_fields: int = 20,
    max_schema_bytes: int = 4000,
    require_versions: bool = False,
) -> list[Finding]:
    """Every finding in ``module`` (whose source is at ``path``), sorted by line."""
    source = Path(module.__file__ or path).read_text()
    tree = ast.parse(source, filename=path)
    findings: list[Finding] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            cls = getattr(module, node.name, None)
            # A base declared with register=False is never sent itself.
            base = any(k.arg == "register" for k in node.keywords)
            if (
                isinstance(cls, type)
                and issubclass(cls, Message)
                and not base
                and cls.__module__ == module.__name__
            ):
                findings += _check_message(
                    cls, node, path, max_fields, max_schema_bytes, require_versions
                )
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and _is_handler(fn):
            findings += _check_handler(fn, path)
    return sorted(findings)


def _check_message(
    cls: type[Message],
    node: ast.ClassDef,
    path: str,
    max_fields: int,
    max_schema_bytes: int,
    require_versions: bool,
) -> list[Finding]:
    out: list[Finding] = []
    word, name = action_word(cls.__name__), cls.__name__

    def add(code: str, message: str) -> None:
        out.append(Finding(path, node.lineno, code, message))

    if issubclass(cls, Command) and is_past_tense(word):
        add(
            "EB101",
            f"command {name} is named like an event ({word!r} is past tense); "
            "name commands imperatively, e.g. PlaceOrder",
        )
    if issubclass(cls, Event) and not is_past_tense(word):
        add(
            "EB102",
            f"event {name} is not named in the past tense ({word!r}); name events "
            "after what happened, e.g. OrderPlaced",
        )
    fields = len(cls.model_fields)
    try:
        schema = len(json.dumps(cls.model_json_schema()))
    except Exception:  # a field pydantic cannot describe: the field count still applies
        schema = 0
    if fields > max_fields or schema > max_schema_bytes:
        add(
            "EB103",
            f"{cls.__kind__} {name} is oversize ({fields} fields, JSON schema "
            f"{schema} bytes; limits {max_fields} and {max_schema_bytes}); keep "
            "events small: send ids, not whole objects",
        )
    if require_versions and not any(k.arg == "version" for k in node.keywords):
        add(
            "EB105",
            f"{cls.__kind__} {name} declares no version; add version=1 to the "
            "class keywords so its schema can evolve with upcasters",
        )
    return out


def _is_handler(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(
        isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "subscribe"
        for d in fn.decorator_list
    )


def _check_handler(fn: ast.FunctionDef | ast.AsyncFunctionDef, path: str) -> list[Finding]:
    params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    ctx = params[1] if len(params) > 1 else None
    out: list[Finding] = []
    for call in ast.walk(fn):
        if not (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr in _PUBLISHING
        ):
            continue
        receiver = call.func.value
        if isinstance(receiver, ast.Name) and receiver.id == ctx:
            continue
        via = ast.unparse(call.func)
        method = call.func.attr
        hint = f"{ctx}.{method}" if ctx else f"take (event, ctx) and call ctx.{method}"
        out.append(
            Finding(
                path,
                call.lineno,
                "EB104",
                f"handler {fn.name} publishes with {via}() instead of its context; "
                f"correlation and causation then depend on the task it runs in: "
                f"use {hint}",
            )
        )
    return out


def _load(target: str) -> tuple[ModuleType, str]:
    if target.endswith(".py") or os.sep in target:
        file = Path(target)
        if not file.is_file():
            fail(f"{target}: no such file", EXIT_IMPORT)
        sys.path.insert(0, str(file.resolve().parent))
        return _import(file.stem), target
    sys.path.insert(0, os.getcwd())
    module: Any = _import(target)
    file_name = getattr(module, "__file__", None)
    if not file_name:
        fail(f"module {target!r} has no source file to check", EXIT_IMPORT)
    try:
        shown = os.path.relpath(file_name)
    except ValueError:  # another drive (Windows)
        shown = file_name
    return module, shown


def check(
    target: Annotated[str, typer.Argument(help="Module (shop.service) or file (shop/service.py)")],
    max_fields: Annotated[int, typer.Option(help="Most fields an event may have")] = 20,
    max_schema_bytes: Annotated[
        int, typer.Option(help="Largest JSON schema (bytes) an event may have")
    ] = 4000,
    require_versions: Annotated[
        bool, typer.Option(help="Flag events and commands without an explicit version= (EB105)")
    ] = False,
) -> None:
    """Lint a service module: message naming, payload size, versions, handlers' publishing."""
    module, path = _load(target)
    findings = check_module(
        module,
        path,
        max_fields=max_fields,
        max_schema_bytes=max_schema_bytes,
        require_versions=require_versions,
    )
    for finding in findings:
        typer.echo(str(finding))
    if findings:
        typer.echo(f"{len(findings)} finding(s)", err=True)
        raise typer.Exit(code=1)
