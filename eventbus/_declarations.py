"""What a handler says it publishes: the message classes its return annotation names.

A choreography step publishes what it returns, so its annotation (``-> PaymentCharged``,
``-> A | B``, ``-> list[A]``) is a declaration the service's AsyncAPI document can use
without the author repeating it in ``bus.publishes(...)``.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from typing import Any

from eventbus.events import Message


def returned_messages(fn: Callable[..., Any]) -> list[type[Message]]:
    """The message classes in ``fn``'s return annotation, in order; none when it has no
    annotation, or one that cannot be resolved (a name defined later, a lambda)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an unresolvable forward reference declares nothing
        return []
    found: list[type[Message]] = []
    _collect(hints.get("return"), found)
    return found


def _collect(annotation: Any, found: list[type[Message]]) -> None:
    if isinstance(annotation, type) and issubclass(annotation, Message):
        if annotation not in found:
            found.append(annotation)
        return
    origin = typing.get_origin(annotation)
    if (
        origin is typing.Union
        or origin is types.UnionType
        or origin in (list, tuple)
        or (isinstance(origin, type) and origin.__module__ == "collections.abc")
    ):
        for argument in typing.get_args(annotation):
            _collect(argument, found)
