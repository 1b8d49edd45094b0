"""What turns pydantic's Python-mode dump of a model into the values a format's writer
takes, made once per class: only the fields that need it are touched."""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from pydantic import BaseModel

Convert = Callable[[Any], Any]
_ARRAYS = (list, tuple, set, frozenset)


def converter(
    model: type[BaseModel], *, as_text: tuple[type, ...], enum_values: bool
) -> Convert | None:
    """The function that converts ``model``'s dump, or ``None`` when nothing needs it:
    values of the ``as_text`` types become their text, enums their values (every
    enum with ``enum_values``, else those that are neither ``str`` nor ``int``)."""
    return _Maker(as_text, enum_values).make(model)


class _Maker:
    def __init__(self, as_text: tuple[type, ...], enum_values: bool) -> None:
        self.as_text, self.enum_values = as_text, enum_values
        self.seen: set[type] = set()
        self.walk = partial(walk, as_text=as_text, enum_values=enum_values)

    def make(self, annotation: Any) -> Convert | None:
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin is typing.Annotated:
            return self.make(args[0])
        if origin in (typing.Union, types.UnionType):
            # Which member a value is, the annotation does not say: the generic walk.
            return self.walk if any(self.make(arg) for arg in args) else None
        if origin in _ARRAYS and args:
            item = self.make(args[0])
            return None if item is None else (lambda value: [item(x) for x in value])
        if origin in (dict, Mapping) and len(args) == 2:
            each = self.make(args[1])
            return None if each is None else (lambda value: {k: each(v) for k, v in value.items()})
        if not isinstance(annotation, type):
            return None
        if issubclass(annotation, self.as_text):
            return str
        if issubclass(annotation, enum.Enum):
            plain = not issubclass(annotation, str | int)
            return _value if self.enum_values or plain else None
        if issubclass(annotation, BaseModel):
            return self.record(annotation)
        return None

    def record(self, model: type[BaseModel]) -> Convert | None:
        if model in self.seen:
            return self.walk  # a recursive model
        self.seen.add(model)
        fields = {
            name: convert
            for name, info in model.model_fields.items()
            if (convert := self.make(info.annotation)) is not None
        }
        if not fields:
            return None

        def convert_record(value: dict[str, Any]) -> dict[str, Any]:
            out = dict(value)
            for name, convert in fields.items():
                if out.get(name) is not None:
                    out[name] = convert(out[name])
            return out

        return convert_record


def _value(member: enum.Enum) -> Any:
    return member.value


def walk(value: Any, *, as_text: tuple[type, ...], enum_values: bool) -> Any:
    """Any value of a dump converted as :func:`converter` says, found by walking it
    (sets and tuples become lists)."""
    if isinstance(value, dict):
        return {k: walk(v, as_text=as_text, enum_values=enum_values) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [walk(v, as_text=as_text, enum_values=enum_values) for v in value]
    if isinstance(value, enum.Enum):
        if enum_values or not isinstance(value, str | int):
            return value.value
        return value
    if isinstance(value, as_text):
        return str(value)
    return value
