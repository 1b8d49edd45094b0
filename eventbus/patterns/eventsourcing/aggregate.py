"""Event-sourced aggregates: state changes only by recording events and applying them.

::

    class Account(Aggregate):
        def __init__(self, id: str) -> None:
            super().__init__(id)
            self.balance = 0

        def deposit(self, amount: int) -> None:      # a command: check, then record
            if amount <= 0:
                raise ValueError("deposit a positive amount")
            self.record(Deposited(amount=amount))

        @applies(Deposited)                           # an event: change state, never fail
        def _deposited(self, event: Deposited) -> None:
            self.balance += event.amount

The events are the bus's own :class:`~eventbus.Event` classes, so what an
aggregate records is what the bus publishes and what the registry upcasts.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ValidationError

from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError
from eventbus.events import Message
from eventbus.patterns.eventsourcing.state import decode_state, encode_state

A = TypeVar("A", bound="Aggregate")
M = TypeVar("M", bound=Message)
_APPLIES = "__eventbus_applies__"


def applies(*classes: type[Message]) -> Callable[[Callable[[A, M], None]], Callable[[A, M], None]]:
    """Decorator: this aggregate method applies events of ``classes`` to the state."""

    def mark(fn: Callable[[A, M], None]) -> Callable[[A, M], None]:
        setattr(fn, _APPLIES, classes)
        return fn

    return mark


class Aggregate:
    """Base of event-sourced aggregates (see the module docs).

    ``id`` is the stream id; ``version`` counts the events applied (saved or not);
    ``pending`` are the events recorded since the last save. Class attributes for
    snapshots (the state is the public attributes, except ``id`` and ``version``):

    - ``snapshot_type``: stored with snapshots; defaults to the class name.
    - ``snapshot_version``: raise it when the state's shape changes. An older
      snapshot is upcast by the static methods ``upcast_snapshot_v1_v2(state)``,
      ``upcast_snapshot_v2_v3(state)``... (each takes and returns the state as a
      dict: attribute values, or the state model's JSON form); without a full
      chain it is ignored and the state rebuilt from the events.
    - ``state_model``: a pydantic model with one field per attribute; snapshots
      then go through it (its JSON, validated back into its field types). Without
      it, the state is kept in an exact JSON form of its values
      (:mod:`~eventbus.patterns.eventsourcing.state`): ``dict`` keys, tuples,
      sets, ``UUID``, ``Decimal``, datetimes, enums, models and dataclasses come
      back as they were, so a load from a snapshot equals a full replay.
    """

    snapshot_type: ClassVar[str] = ""
    snapshot_version: ClassVar[int] = 1
    state_model: ClassVar[type[BaseModel] | None] = None
    _appliers: ClassVar[dict[type[Message], str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        appliers: dict[type[Message], str] = {}
        for klass in reversed(cls.__mro__):
            for name, value in vars(klass).items():
                for event_class in getattr(value, _APPLIES, ()):
                    appliers[event_class] = name
        cls._appliers = appliers
        if not cls.__dict__.get("snapshot_type"):
            cls.snapshot_type = cls.__name__

    def __init__(self, id: str) -> None:
        self.id = id
        self.version = 0
        self._pending: list[Message] = []
        self._envelopes: list[Envelope] = []  # ids fixed at the first save attempt

    @property
    def pending(self) -> list[Message]:
        """Events recorded and applied but not saved yet."""
        return list(self._pending)

    def record(self, event: Message) -> None:
        """Apply ``event`` to the state and keep it for the next save.

        It is applied as a load will read it back, through its JSON (a ``timezone``
        comes back as pydantic's ``TzInfo``, a ``fold`` is dropped...), so the state
        after a command is the state a replay rebuilds, and so is a snapshot of it.
        """
        try:
            as_stored = type(event).__pydantic_validator__.validate_json(event.to_bytes())
        except ValidationError as exc:
            raise ConfigurationError(
                f"{type(event).__name__} ({event.event_type()!r}) cannot be read back from "
                f"its own JSON, so a load could not replay it: {exc}"
            ) from exc
        self.apply(as_stored)
        self._pending.append(event)
        self._envelopes.clear()

    def apply(self, event: Message) -> None:
        """Change the state by one event (loading calls this for every stored event)."""
        name = self._appliers.get(type(event))
        if name is None:
            raise ConfigurationError(
                f"{type(self).__name__} has no method for {type(event).__name__} "
                f"({event.event_type()!r}); decorate one with @applies({type(event).__name__})"
            )
        getattr(self, name)(event)
        self.version += 1

    # -- snapshots -------------------------------------------------------------------

    def snapshot_state(self) -> bytes:
        """The state as bytes for a snapshot (see the class docs); override it and
        :meth:`restore_state` together for a state of your own form."""
        state = {
            k: v
            for k, v in vars(self).items()
            if not k.startswith("_") and k not in ("id", "version")
        }
        model = self.state_model
        if model is None:
            return encode_state(state)
        missing = set(state) - set(model.model_fields)
        if missing:
            raise ConfigurationError(
                f"{type(self).__name__}.state_model {model.__name__} has no field for "
                f"{sorted(missing)}: a snapshot would lose them; add the fields"
            )
        try:
            # strict: a value the model would convert would not come back as it was
            return model.model_validate(state, strict=True).model_dump_json().encode()
        except ValidationError as exc:
            raise ConfigurationError(
                f"{type(self).__name__} state does not match its state_model "
                f"{model.__name__}: {exc}"
            ) from exc

    def restore_state(self, state: bytes) -> None:
        """Set the state from :meth:`snapshot_state`'s bytes."""
        model = self.state_model
        if model is None:
            values = decode_state(state)
        else:
            restored = model.model_validate_json(state)
            values = {name: getattr(restored, name) for name in type(restored).model_fields}
        for name, value in values.items():
            setattr(self, name, value)

    @classmethod
    def upcast_snapshot(cls, state: bytes, schema: int) -> bytes | None:
        """A snapshot's state taken at ``snapshot_version`` ``schema``, brought to the
        class's current one by its ``upcast_snapshot_vN_vM`` methods; ``None`` when
        a step is missing (the snapshot is then ignored)."""
        steps = [
            getattr(cls, f"upcast_snapshot_v{v}_v{v + 1}", None)
            for v in range(schema, cls.snapshot_version)
        ]
        if not steps or any(step is None for step in steps):
            return None
        data: dict[str, Any] = decode_state(state) if cls.state_model is None else json.loads(state)
        for step in steps:
            data = step(data)  # type: ignore[misc]
        if cls.state_model is None:
            return encode_state(data)
        return json.dumps(data).encode()

    def _mark_saved(self) -> None:
        self._pending.clear()
        self._envelopes.clear()
