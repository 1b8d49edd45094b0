"""The Avro schema of a pydantic model, and its values in the shape fastavro writes.

Python type -> Avro type:

- ``str`` string, ``bool`` boolean, ``int`` long, ``float`` double, ``bytes`` bytes;
- ``Decimal`` string (its exact text: Avro's decimal type needs a scale the model does
  not declare), ``UUID`` string with logical type ``uuid``;
- ``datetime`` long ``timestamp-micros`` (an instant: a naive datetime is taken as
  UTC and read back aware), ``date`` int ``date``, ``time`` long ``time-micros``;
- an ``Enum`` whose values are all valid Avro names: an Avro enum of those values;
  other enums: the type of their values;
- ``list``/``tuple[X, ...]``/``set``/``frozenset`` array, ``dict[str, X]`` map,
  ``X | None`` the union ``["null", X]`` (``[X, "null"]`` when its default is not
  None), other unions the union of their members, ``Literal`` its values' type;
- a nested pydantic model a record, defined once and named after its class.

Anything else (``Any``, a ``dict`` with non-``str`` keys, an arbitrary class) raises
:class:`~eventbus.errors.ConfigurationError` naming the field.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
import types
import typing
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from pydantic import BaseModel

from eventbus.errors import ConfigurationError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PRIMITIVES: dict[type, Any] = {
    str: "string",
    bool: "boolean",
    int: "long",
    float: "double",
    bytes: "bytes",
    Decimal: "string",
    uuid.UUID: {"type": "string", "logicalType": "uuid"},
    dt.datetime: {"type": "long", "logicalType": "timestamp-micros"},
    dt.date: {"type": "int", "logicalType": "date"},
    dt.time: {"type": "long", "logicalType": "time-micros"},
}
_ARRAYS = (list, tuple, set, frozenset)
_SIMPLE_DEFAULTS = (str, int, float, bool)


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The Avro record schema of ``model`` (a plain JSON-able dict)."""
    schema: dict[str, Any] = _Deriver().record(model, model.__name__)
    return schema


class _Deriver:
    def __init__(self) -> None:
        self.named: dict[str, object] = {}  # Avro name -> the class it was defined for

    def record(self, model: type[BaseModel], where: str) -> Any:
        name = self._name(model, where)
        if name is None:
            return model.__name__  # defined earlier in this schema: refer to it
        fields = []
        for field_name, info in model.model_fields.items():
            at = f"{where}.{field_name}"
            avro = self.type_of(info.annotation, at)
            field: dict[str, Any] = {"name": field_name, "type": avro}
            if not info.is_required() and info.default_factory is None:
                default = info.default
                if default is None and isinstance(avro, list) and "null" in avro:
                    avro.remove("null")
                    avro.insert(0, "null")
                    field["default"] = None
                elif isinstance(default, _SIMPLE_DEFAULTS) and not isinstance(default, enum.Enum):
                    if isinstance(avro, list) and "null" in avro:
                        avro.remove("null")
                        avro.append("null")
                    if _plain_type(avro) == _default_type(default):
                        field["default"] = default
            fields.append(field)
        return {"type": "record", "name": name, "fields": fields}

    def _name(self, cls: type, where: str) -> str | None:
        """The Avro name of ``cls``, or ``None`` when already defined in this schema."""
        name = cls.__name__
        if not _NAME.match(name):
            raise ConfigurationError(f"{where}: {name!r} is not a valid Avro name")
        owner = self.named.get(name)
        if owner is cls:
            return None
        if owner is not None:
            raise ConfigurationError(
                f"{where}: two classes named {name!r} in one Avro schema; rename one"
            )
        self.named[name] = cls
        return name

    def type_of(self, annotation: Any, where: str) -> Any:
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is typing.Annotated:
            return self.type_of(args[0], where)
        if origin in (typing.Union, types.UnionType):
            members: list[Any] = []
            for arg in args:
                member = "null" if arg is type(None) else self.type_of(arg, where)
                if member not in members:
                    members.append(member)
            if "null" in members:
                members.remove("null")
                members.insert(0, "null")
            return members
        if origin is typing.Literal:
            kinds = {type(value) for value in args}
            if len(kinds) == 1 and (kind := kinds.pop()) in (str, int, bool):
                return _PRIMITIVES[kind]
            raise ConfigurationError(f"{where}: a Literal of mixed types has no Avro type")
        if origin in _ARRAYS:
            if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                raise ConfigurationError(
                    f"{where}: a fixed-length tuple has no Avro type; use tuple[X, ...] or list"
                )
            return {"type": "array", "items": self.type_of(args[0] if args else Any, where)}
        if origin in (dict, Mapping):
            if args and args[0] is not str:
                raise ConfigurationError(f"{where}: Avro maps need str keys, not {args[0]!r}")
            return {"type": "map", "values": self.type_of(args[1] if args else Any, where)}
        if isinstance(annotation, type):
            if issubclass(annotation, BaseModel):
                return self.record(annotation, where)
            if issubclass(annotation, enum.Enum):
                return self.enum(annotation, where)
            for kind in (bool, dt.datetime, *_PRIMITIVES):  # bool before int, datetime before date
                if issubclass(annotation, kind):
                    return _copy(_PRIMITIVES[kind])
        raise ConfigurationError(
            f"{where}: {annotation!r} has no Avro type; use a concrete type (str, int, "
            "float, bool, Decimal, datetime, UUID, an Enum, a list, a dict[str, X], a model)"
        )

    def enum(self, cls: type[enum.Enum], where: str) -> Any:
        values = [member.value for member in cls]
        if all(isinstance(v, str) and _NAME.match(v) for v in values):
            name = self._name(cls, where)
            if name is None:
                return cls.__name__
            return {"type": "enum", "name": name, "symbols": values}
        kinds = {type(v) for v in values}
        if len(kinds) == 1 and (kind := kinds.pop()) in (str, int, float):
            return _PRIMITIVES[kind]
        raise ConfigurationError(f"{where}: enum {cls.__name__} mixes value types")


def _copy(avro: Any) -> Any:
    return dict(avro) if isinstance(avro, dict) else avro


def _plain_type(avro: Any) -> Any:
    return avro[0] if isinstance(avro, list) else avro


def _default_type(value: object) -> str:
    return {bool: "boolean", int: "long", float: "double", str: "string"}[type(value)]
