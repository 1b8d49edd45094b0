"""An aggregate's state as JSON that comes back exactly as it was (the default snapshot).

Plain JSON changes values on the way back: ``{7: 1}`` returns as ``{"7": 1}``, a
tuple as a list, a ``Decimal`` or ``UUID`` not at all. So a load from a snapshot
would differ from a full replay of the events. Here every value JSON cannot
carry as itself is written as a tagged object (``{"$tuple": [...]}``, as the
``eventsourcing`` library's transcoder does with ``_type_``), and read back as
the same type:

- ``None``, ``bool``, ``int``, ``float``, ``str``, ``list``: as JSON;
- ``dict``: a JSON object when every key is a ``str`` not starting with ``$``,
  otherwise ``{"$dict": [[key, value], ...]}`` (any hashable key of these types);
- ``tuple``, ``set``, ``frozenset``, ``bytes``, ``UUID``, ``Decimal``,
  ``datetime`` and ``time`` (with their time zone: a ``ZoneInfo`` by key, a fixed
  ``timezone`` or pydantic's ``TzInfo`` as that same class), ``date``,
  ``timedelta``;
- an ``Enum`` member, a pydantic model, a dataclass instance: tagged with its
  class's import path (the class must be importable: defined at module level),
  a model or dataclass through pydantic, so its fields come back as their
  declared types.

Anything else is refused with the attribute named: declare the aggregate's
``state_model`` (a pydantic model) or override ``snapshot_state``/``restore_state``.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import uuid
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from decimal import Decimal
from enum import Enum
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, TypeAdapter
from pydantic_core import TzInfo

from eventbus.errors import ConfigurationError


class StateEncodingError(ConfigurationError):
    """A value of an aggregate's state has no exact snapshot form."""


class LegacyStateError(ValueError):
    """A snapshot state in the plain JSON of earlier versions (not exact: unused)."""


# Marks the exact form at the top level (attribute names never start with "$"), so
# a snapshot an earlier version wrote in plain JSON is told apart and not trusted.
_MARK = "$exact"


def encode_state(state: dict[str, Any]) -> bytes:
    """``state`` (attribute name -> value) as JSON bytes; see the module docs."""
    encoded: dict[str, Any] = {_MARK: 1}
    for name, value in state.items():
        try:
            encoded[name] = _encode(value)
        except StateEncodingError as exc:
            raise StateEncodingError(f"attribute {name!r}: {exc}") from None
    return json.dumps(encoded, separators=(",", ":"), sort_keys=True).encode()


def decode_state(data: bytes) -> dict[str, Any]:
    """What :func:`encode_state` wrote, with every value of its original type."""
    decoded = json.loads(data, object_hook=_decode_object)
    if not isinstance(decoded, dict):
        raise ValueError("a snapshot state is a JSON object")
    if decoded.pop(_MARK, None) != 1:
        raise LegacyStateError(
            "a snapshot in the plain JSON of an earlier eventbus "
            "(int keys and tuples did not survive it)"
        )
    return decoded


def _encode(value: Any) -> Any:
    # Enum first: an IntEnum is an int, a StrEnum a str.
    if isinstance(value, Enum):
        return {"$enum": [_path(type(value)), _encode(value.value)]}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_encode(item) for item in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v) for k, v in value.items()}
        return {"$dict": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(item) for item in value]}
    if isinstance(value, set | frozenset):
        tag = "$set" if isinstance(value, set) else "$frozenset"
        return {tag: [_encode(item) for item in value]}
    if isinstance(value, BaseModel):
        return {"$model": [_path(type(value)), value.model_dump_json()]}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        adapter: TypeAdapter[Any] = TypeAdapter(type(value))
        return {"$dataclass": [_path(type(value)), adapter.dump_json(value).decode()]}
    return _encode_scalar(value)


def _encode_scalar(value: Any) -> Any:
    if isinstance(value, datetime):
        zone = _zone(value.tzinfo, value)
        return {"$datetime": [value.replace(tzinfo=None).isoformat(), zone, value.fold]}
    if isinstance(value, date):
        return {"$date": value.isoformat()}
    if isinstance(value, time):
        zone = _zone(value.tzinfo, None)
        return {"$time": [value.replace(tzinfo=None).isoformat(), zone, value.fold]}
    if isinstance(value, timedelta):
        return {"$timedelta": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode()}
    raise StateEncodingError(
        f"a {type(value).__module__}.{type(value).__qualname__} has no exact snapshot form; "
        "declare the aggregate's state_model (a pydantic model), or override "
        "snapshot_state() and restore_state()"
    )


def _zone(tz: tzinfo | None, moment: datetime | None) -> Any:
    """The time zone as itself: the same class comes back, not just the same offset
    (pydantic decodes offsets as its own ``TzInfo``, the standard library as
    ``timezone``; a ``ZoneInfo`` keeps its rules)."""
    if tz is None:
        return None
    if isinstance(tz, ZoneInfo):
        return ["zone", tz.key]
    offset = tz.utcoffset(moment)
    if isinstance(tz, timezone) and offset is not None:
        name = tz.tzname(None)
        custom = name if name != timezone(offset).tzname(None) else None
        return ["fixed", [offset.days, offset.seconds, offset.microseconds], custom]
    if isinstance(tz, TzInfo) and offset is not None:
        return ["pydantic", offset.total_seconds()]
    raise StateEncodingError(
        f"time zone {tz!r} ({type(tz).__qualname__}) has no exact "
        "snapshot form; use ZoneInfo or datetime.timezone"
    )


def _unzone(spec: Any) -> tzinfo | None:
    if spec is None:
        return None
    if spec[0] == "zone":
        return ZoneInfo(spec[1])
    if spec[0] == "fixed":
        days, seconds, micros = spec[1]
        offset = timedelta(days=days, seconds=seconds, microseconds=micros)
        return timezone(offset) if spec[2] is None else timezone(offset, spec[2])
    return TzInfo(spec[1])


def _path(cls: type) -> str:
    path = f"{cls.__module__}:{cls.__qualname__}"
    if "<locals>" in cls.__qualname__:
        raise StateEncodingError(
            f"{path} is defined inside a function, so a snapshot could not import it "
            "back; define it at module level"
        )
    return path


def _import(path: str, kind: str) -> Any:
    module, _, qualname = path.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    fits = {
        "enum": lambda c: issubclass(c, Enum),
        "model": lambda c: issubclass(c, BaseModel),
        "dataclass": dataclasses.is_dataclass,
    }
    if not (isinstance(found, type) and fits[kind](found)):
        raise ValueError(f"{path} in a snapshot is not a class of kind {kind}")
    return found


def _decode_object(obj: dict[str, Any]) -> Any:
    if len(obj) != 1:
        return obj
    ((tag, data),) = obj.items()
    if not tag.startswith("$") or tag == _MARK:
        return obj
    if tag == "$dict":
        return {key: value for key, value in data}  # keys decoded already (tuples...)
    if tag == "$tuple":
        return tuple(data)
    if tag == "$set":
        return set(data)
    if tag == "$frozenset":
        return frozenset(data)
    if tag == "$enum":
        return _import(data[0], "enum")(data[1])
    if tag == "$model":
        return _import(data[0], "model").model_validate_json(data[1])
    if tag == "$dataclass":
        return TypeAdapter(_import(data[0], "dataclass")).validate_json(data[1])
    return _decode_scalar(tag, data)


def _decode_scalar(tag: str, data: Any) -> Any:
    if tag == "$datetime":
        text, zone, fold = data
        return datetime.fromisoformat(text).replace(tzinfo=_unzone(zone), fold=fold)
    if tag == "$date":
        return date.fromisoformat(data)
    if tag == "$time":
        text, zone, fold = data
        return time.fromisoformat(text).replace(tzinfo=_unzone(zone), fold=fold)
    if tag == "$timedelta":
        return timedelta(days=data[0], seconds=data[1], microseconds=data[2])
    if tag == "$decimal":
        return Decimal(data)
    if tag == "$uuid":
        return uuid.UUID(data)
    if tag == "$bytes":
        return base64.b64decode(data)
    raise ValueError(f"unknown tag {tag!r} in a snapshot state")
