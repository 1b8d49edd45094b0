"""What a saga is made of: its steps, and the context a step's action runs with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Unpack

from eventbus.context import PublishOptions, current_envelope
from eventbus.envelope import Envelope
from eventbus.events import Command, Message
from eventbus.patterns.sagas.publishing import SagaPublisher
from eventbus.patterns.sagas.state import SagaError, SagaSession, SagaState
from eventbus.patterns.sql import Transaction


class SagaContext:
    """What a step's action or compensation gets: the saga, its data, a way to publish,
    and (on SQL stores) the transaction its own writes should use."""

    def __init__(
        self, state: SagaState, step: str, session: SagaSession, publisher: SagaPublisher
    ) -> None:
        self.state = state
        self.step = step
        self.session = session
        self._publisher = publisher

    @property
    def saga_id(self) -> str:
        """The saga's id (its correlation id too, when it was started outside a handler)."""
        return self.state.saga_id

    @property
    def data(self) -> dict[str, Any]:
        """The saga's data: changes are saved with its state."""
        return self.state.data

    @property
    def tx(self) -> Transaction | None:
        """The database transaction the saga's change runs in (``None`` in memory)."""
        return self.session.tx

    async def publish(
        self, message: Message, *, topic: str | None = None, **options: Unpack[PublishOptions]
    ) -> Envelope | None:
        """Publish as part of this saga change (sent only if the change commits)."""
        if current_envelope.get() is None and "parent" not in options:
            options.setdefault("correlation_id", self.state.saga_id)
        return await self._publisher.publish(message, topic=topic, **options)

    async def send(self, command: Command, **options: Unpack[PublishOptions]) -> Envelope | None:
        """Send ``command`` as part of this saga change."""
        return await self.publish(command, **options)


StepAction = Callable[[SagaContext], Awaitable[None]]


@dataclass(frozen=True)
class Step:
    """One step: ``action`` does (or asks for) it, ``compensation`` undoes it.

    With ``timeout`` (seconds) the step waits for a reply and compensates when none
    came in time; without, it is done when ``action`` returns.
    """

    name: str
    action: StepAction
    compensation: StepAction | None = None
    timeout: float | None = None


@dataclass(frozen=True)
class SagaDefinition:
    """A saga type: its steps in order, and what to do once it ended either way."""

    saga_type: str
    steps: Sequence[Step]
    on_completed: StepAction | None = None
    on_compensated: StepAction | None = None
    by_name: Mapping[str, Step] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        names = [step.name for step in self.steps]
        if len(set(names)) != len(names) or not names:
            raise SagaError(f"saga {self.saga_type!r} needs steps with distinct names: {names}")
        object.__setattr__(self, "by_name", {step.name: step for step in self.steps})
