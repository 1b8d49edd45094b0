"""How a saga step's messages reach the broker: the one seam between saga state and publishing.

A step runs inside a unit of work of the saga store (a database transaction on
SQL stores). What it publishes must leave only if that unit of work commits:

- ``transactional=True``: the store's unit of work is a transactional outbox's
  (``SqlSagaStore(db, unit_of_work=outbox.unit_of_work)``), which routes
  ``bus.publish`` into the outbox table inside the same transaction; the relay
  publishes later. Saga state and its messages commit together: nothing lost,
  nothing sent for a state that rolled back.
- ``transactional=False`` (memory store, or no outbox): messages are held until
  the unit of work committed, then published. A crash between the commit and
  the publish loses them (at most once); a rolled-back unit of work sends nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Unpack

from eventbus.bus import EventBus
from eventbus.context import PublishOptions, current_envelope
from eventbus.envelope import Envelope
from eventbus.events import Command, Message


@dataclass
class _Held:
    message: Message
    topic: str | None
    options: dict[str, Any]


@dataclass
class SagaPublisher:
    """Publishes for one unit of work: at once (outbox) or after the commit (held)."""

    bus: EventBus
    transactional: bool
    held: list[_Held] = field(default_factory=list)

    async def publish(self, message: Message, *, topic: str | None = None,
                      **options: Unpack[PublishOptions]) -> Envelope | None:
        """Publish ``message``; returns the envelope when published now, else ``None``."""
        if self.transactional:
            return await self.bus.publish(message, topic=topic, **options)
        held: dict[str, Any] = dict(options)
        # The cause is the message being handled now, not whatever runs at flush time.
        held.setdefault("parent", current_envelope.get())
        self.held.append(_Held(message, topic, held))
        return None

    async def send(self, command: Command, **options: Unpack[PublishOptions]) -> Envelope | None:
        """Send ``command`` to the one group that handles it."""
        return await self.publish(command, **options)

    async def flush(self) -> None:
        """After the commit: publish what was held, in order."""
        held, self.held = self.held, []
        for item in held:
            await self.bus.publish(item.message, topic=item.topic, **item.options)

    def discard(self) -> None:
        """The unit of work rolled back: what it published never happened."""
        self.held.clear()
