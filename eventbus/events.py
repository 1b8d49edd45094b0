"""Typed events and commands, and the registry that maps (type, version) to a class.

::

    class OrderPlaced(Event, type="order.placed", topic="orders", version=2):
        order_id: str

    class StockCounted(Event, type="stock.counted", payload_format="avro"):
        sku: str

    @registry.upcaster("order.placed", from_version=1)
    def _v1_to_v2(data: dict) -> dict:
        return {**data, "order_id": data.pop("id")}
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from eventbus.codec import is_json_content_type
from eventbus.envelope import JSON, Envelope
from eventbus.errors import ConfigurationError, SchemaError

if TYPE_CHECKING:
    from eventbus.payloads import PayloadFormat

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class Message(BaseModel):
    """Common base of :class:`Event` and :class:`Command`: immutable pydantic models.

    Class keywords: ``type`` (stable name stored with every message; defaults to
    the class name, so give one explicitly before you rename classes), ``topic``
    (where it is published by default), ``version`` (the data version) and
    ``payload_format`` (how its data is encoded: ``"json"``, the default, ``"msgpack"``,
    ``"avro"`` or a :class:`~eventbus.payloads.PayloadFormat`; see :mod:`eventbus.payloads`).
    """

    model_config = ConfigDict(frozen=True)

    __event_type__: ClassVar[str] = ""
    __topic__: ClassVar[str] = ""
    __version__: ClassVar[int] = 1
    __kind__: ClassVar[str] = "message"
    __payload_format__: ClassVar[str | PayloadFormat | None] = None

    def __init_subclass__(
        cls,
        *,
        type: str | None = None,
        topic: str | None = None,
        version: int = 1,
        register: bool = True,
        payload_format: str | PayloadFormat | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__name__ in ("Event", "Command") and cls.__module__ == __name__:
            return
        if payload_format is not None:
            from eventbus.payloads import check_format

            where = f"class {cls.__name__}"
            cls.__payload_format__ = check_format(payload_format, where, per_class=True)
        cls.__event_type__ = type or cls.__name__
        cls.__topic__ = topic or cls.__dict__.get("__topic__", "") or cls.__event_type__
        cls.__version__ = version
        if register:
            registry.register(cls)

    @classmethod
    def event_type(cls) -> str:
        """The stable type name written to ``Envelope.type``."""
        return cls.__event_type__

    @classmethod
    def default_topic(cls) -> str:
        """The topic this message is published to unless told otherwise."""
        return cls.__topic__

    @classmethod
    def data_version(cls) -> int:
        """The data version written to ``Envelope.dataversion``."""
        return cls.__version__

    def to_bytes(self) -> bytes:
        """The JSON encoding of the model's data (whatever its ``payload_format``)."""
        return self.__pydantic_serializer__.to_json(self)


class Event(Message):
    """Something that happened (past tense). Every subscribing group receives it."""

    __kind__: ClassVar[str] = "event"


class Command(Message):
    """A request to do something (imperative). Exactly one handler group receives it."""

    __kind__: ClassVar[str] = "command"


class Registry:
    """Maps (type, version) to a message class and holds upcasters for old versions."""

    def __init__(self) -> None:
        self._classes: dict[str, type[Message]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        # class -> whether decoding may call its pydantic validator directly
        self._direct_json: dict[type[Message], bool] = {}

    def register(self, cls: type[Message]) -> None:
        """Make ``cls`` the current class of its type; a clash with another class raises."""
        name = cls.event_type()
        existing = self._classes.get(name)
        # The same module and name again is a re-import (or a reloaded module), not a clash.
        if existing is not None and (existing.__module__, existing.__qualname__) != (
            cls.__module__,
            cls.__qualname__,
        ):
            raise ConfigurationError(
                f"event type {name!r} is claimed by both {existing.__module__}."
                f"{existing.__qualname__} and {cls.__module__}.{cls.__qualname__}; "
                "give one of them an explicit type=..."
            )
        self._classes[name] = cls

    def upcaster(self, type_name: str, *, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: turn data of ``from_version`` into ``from_version + 1``."""

        def decorate(fn: Upcaster) -> Upcaster:
            self._upcasters[(type_name, from_version)] = fn
            return fn

        return decorate

    def classes(self) -> list[type[Message]]:
        """Every registered class, in the order registered."""
        return list(self._classes.values())

    def get(self, type_name: str) -> type[Message] | None:
        """The class registered for ``type_name``, or ``None``."""
        return self._classes.get(type_name)

    def decode(self, envelope: Envelope, cls: type[Message] | None = None) -> Message:
        """Turn an envelope into its typed message, upcasting old versions.

        Raises :class:`SchemaError` (a poison message) for an unknown type, a
        version with no upcaster path, undecodable data or data that fails validation.
        Data that is not JSON is read by its ``datacontenttype`` (:mod:`eventbus.payloads`).
        """
        cls = cls or self._classes.get(envelope.type)
        if cls is None:
            raise SchemaError(
                f"unknown event type {envelope.type!r} (event {envelope.id}): no class is "
                "registered for it; import the module that defines it"
            )
        version, target = envelope.dataversion, cls.data_version()
        content_type = envelope.datacontenttype
        if (
            content_type is not JSON
            and content_type is not None
            and content_type != JSON
            and not is_json_content_type(content_type)
        ):
            return self._decode_other(envelope, cls, content_type)
        if version == target and envelope.data:
            # The common case: pydantic-core parses and validates in one pass.
            direct = self._direct_json.get(cls)
            if direct is None:
                direct = self._direct_json[cls] = _plain_validate_json(cls)
            try:
                if direct:
                    # What model_validate_json calls, without its keyword handling
                    # (~0.6 us per message with pydantic 2.14).
                    return cls.__pydantic_validator__.validate_json(  # type: ignore[no-any-return]
                        envelope.data
                    )
                return cls.model_validate_json(envelope.data)
            except ValidationError as exc:
                raise _invalid(envelope, exc) from exc
        try:
            data = json.loads(envelope.data) if envelope.data else {}
        except ValueError as exc:
            raise SchemaError(
                f"event {envelope.id} ({envelope.type}) data is not JSON: {exc}"
            ) from exc
        return self._upcast(envelope, cls, data)

    def _decode_other(self, envelope: Envelope, cls: type[Message], content_type: str) -> Message:
        """Decode data of another payload format (msgpack, Avro, protobuf) into ``cls``."""
        from eventbus.payloads import read_payload

        event = f"{envelope.id} ({envelope.type} v{envelope.dataversion})"
        if envelope.dataversion > cls.data_version():
            return self._upcast(envelope, cls, {})  # raises: newer than this service knows
        try:
            data = read_payload(envelope.data, content_type, envelope.dataschema, cls, event)
        except SchemaError as exc:
            if str(exc).startswith("event "):
                raise
            raise SchemaError(f"event {event}: {exc}") from exc
        return self._upcast(envelope, cls, data)

    def _upcast(self, envelope: Envelope, cls: type[Message], data: dict[str, Any]) -> Message:
        """``data`` of ``envelope``'s version brought to ``cls``'s by the upcasters."""
        version, target = envelope.dataversion, cls.data_version()
        if version > target:
            raise SchemaError(
                f"event {envelope.id} has {envelope.type!r} version {version}, newer than "
                f"this service knows ({target}); deploy the newer event class"
            )
        while version < target:
            upcast = self._upcasters.get((envelope.type, version))
            if upcast is None:
                raise SchemaError(
                    f"event {envelope.id} has {envelope.type!r} version {version} and no "
                    f"upcaster from version {version}; register one with "
                    f"@registry.upcaster({envelope.type!r}, from_version={version})"
                )
            data = upcast(data)
            version += 1
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _invalid(envelope, exc) from exc


_MODEL_VALIDATE_JSON = BaseModel.model_validate_json.__func__  # type: ignore[attr-defined]


def _plain_validate_json(cls: type[Message]) -> bool:
    """Whether ``cls`` keeps pydantic's own ``model_validate_json`` (a class that
    overrides it is decoded through its override)."""
    return getattr(cls.model_validate_json, "__func__", None) is _MODEL_VALIDATE_JSON


def _invalid(envelope: Envelope, exc: ValidationError) -> SchemaError:
    first = exc.errors()[0]
    if first["type"] == "json_invalid":
        return SchemaError(
            f"event {envelope.id} ({envelope.type}) data is not JSON: {first['msg']}"
        )
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    return SchemaError(
        f"event {envelope.id} ({envelope.type} v{envelope.dataversion}) failed validation: "
        f"{exc.error_count()} error(s): {first['msg']} at {where}"
    )


registry = Registry()
"""The process-wide registry every Event and Command subclass registers in."""
