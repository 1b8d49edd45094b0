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

from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError
from eventbus.events import Message

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
    ``pending`` are the events recorded since the last save. Class attributes:
    ``snapshot_type`` (stored with snapshots; defaults to the class name) and
    ``snapshot_version`` (raise it when the state's shape changes, so older
    snapshots are ignored and the state is rebuilt from the events).
    """

    snapshot_type: ClassVar[str] = ""
    snapshot_version: ClassVar[int] = 1
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
        """Apply ``event`` to the state and keep it for the next save."""
        self.apply(event)
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
        """The state as JSON bytes. The default keeps the public attributes (those not
        starting with ``_``, except ``id`` and ``version``); override both this and
        :meth:`restore_state` for state that JSON does not carry."""
        state = {k: v for k, v in vars(self).items()
                 if not k.startswith("_") and k not in ("id", "version")}
        try:
            return json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
        except TypeError as exc:
            raise ConfigurationError(
                f"{type(self).__name__} state is not JSON ({exc}); override "
                "snapshot_state() and restore_state(), or do not take snapshots"
            ) from exc

    def restore_state(self, state: bytes) -> None:
        """Set the state from :meth:`snapshot_state`'s bytes."""
        for name, value in json.loads(state).items():
            setattr(self, name, value)

    def _mark_saved(self) -> None:
        self._pending.clear()
        self._envelopes.clear()
