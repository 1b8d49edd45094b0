"""How a saga step's messages reach the broker: the one seam between saga state and publishing.

A step runs inside a unit of work of the saga store (a database transaction on
SQL stores). What it publishes must leave only if that unit of work commits:

- ``transactional=True``: the store's unit of work is a transactional outbox's
  (``SQLSagaStore(db, unit_of_work=outbox.unit_of_work)``), which routes
  ``bus.publish`` into the outbox table inside the same transaction; the relay
  publishes later. Saga state and its messages commit together: nothing lost,
  nothing sent for a state that rolled back.
- ``transactional=False`` (memory store, or no outbox): each message becomes its
  envelope at once and is written into the saga's own state (``outgoing``), so
  it commits with the change; after the commit it is published, then removed
  from the state. A publish that fails (or a crash before it) leaves it there:
  the orchestrator sends it, with the same id, before the saga's next change or
  on its next tick. At least once, never for a change that rolled back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from itertools import groupby
from typing import Unpack

from eventbus.bus import EventBus
from eventbus.codec import decode_structured, encode_structured
from eventbus.context import PublishOptions
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError
from eventbus.events import Command, Message
from eventbus.patterns.sagas.state import (
    SagaConcurrencyError,
    SagaPublishError,
    SagaState,
    SagaStore,
)

logger = logging.getLogger("eventbus.saga")


@dataclass
class SagaPublisher:
    """Publishes for one unit of work: at once (outbox) or into ``state.outgoing``."""

    bus: EventBus
    transactional: bool
    state: SagaState | None = None
    """The saga whose change this is; held messages are written into its state."""
    held: list[dict[str, str]] = field(default_factory=list)

    async def publish(
        self, message: Message, *, topic: str | None = None, **options: Unpack[PublishOptions]
    ) -> Envelope | None:
        """Publish ``message``; returns the envelope when published now, else ``None``."""
        if self.transactional:
            return await self.bus.publish(message, topic=topic, **options)
        # Built now: its cause is the message being handled now, not whatever runs
        # when it is sent, and a resend after a failure keeps its id.
        envelope = self.bus.envelope_for(message, **options)
        item = {
            "topic": topic or message.default_topic(),
            "id": envelope.id,
            "envelope": encode_structured(envelope).decode("utf-8"),
        }
        self.held.append(item)
        if self.state is not None:
            self.state.outgoing.append(item)
        return None

    async def send(self, command: Command, **options: Unpack[PublishOptions]) -> Envelope | None:
        """Send ``command`` to the one group that handles it."""
        return await self.publish(command, **options)

    def discard(self) -> None:
        """The unit of work rolled back: what it published never happened."""
        self.held.clear()


def check_outbox(saga_type: str, store: SagaStore, bus: EventBus) -> None:
    """Refuse ``transactional_publish=True`` unless an outbox really takes the publishes.

    With it a step's publish goes out at once, trusting the store's unit of work to
    write it into an outbox table in the saga's transaction. Without an outbox it
    would reach the broker while that transaction may still roll back: a command
    for a saga change that never happened.
    """
    outbox = getattr(store, "outbox", None)
    if outbox is None:
        raise ConfigurationError(
            f"SagaOrchestrator({saga_type!r}, transactional_publish=True) on a "
            f"{type(store).__name__} with no outbox: its steps' messages would be sent "
            "before the saga's change commits, and sent even if it rolls back. Give the "
            "store the outbox's unit of work (SQLSagaStore(db, unit_of_work="
            "outbox.unit_of_work)), or leave transactional_publish=False (messages are "
            "held until the change commits)"
        )
    if outbox.middleware not in bus.publish_middleware:
        raise ConfigurationError(
            f"SagaOrchestrator({saga_type!r}, transactional_publish=True): the bus does "
            f"not route publishes into the store's outbox (table {outbox.table!r}), so "
            "they would go straight to the broker before the saga's change commits. Add "
            "outbox.middleware to the bus (EventBus(..., publish_middleware=[..., "
            "outbox.middleware]))"
        )


async def deliver(
    bus: EventBus, store: SagaStore, saga_type: str, saga_id: str, outgoing: list[dict[str, str]]
) -> SagaState | None:
    """Send messages a committed change stored with the saga, then drop them from its
    state; returns that state (``None`` when there was nothing to send).

    Until both happened they stay in the saga's state, so a failure here (or a
    crash) loses nothing: they are sent again, same ids, before the next change.
    """
    if not outgoing:
        return None
    try:
        await send_outgoing(bus, outgoing)
    except Exception as exc:
        logger.warning(
            "saga %s: %d message(s) not sent (%s: %s); kept with the saga",
            saga_id,
            len(outgoing),
            type(exc).__name__,
            exc,
        )
        raise SagaPublishError(
            f"saga {saga_id!r} ({saga_type}): its change was saved, but publishing its "
            f"{len(outgoing)} message(s) failed ({type(exc).__name__}: {exc}); they are "
            "kept with the saga and sent again, with the same ids, before its next change "
            "or by tick()"
        ) from exc
    return await forget_sent(store, saga_id, {item["id"] for item in outgoing})


async def send_outgoing(bus: EventBus, outgoing: list[dict[str, str]]) -> None:
    """Publish stored messages in order (one call per run of the same topic)."""
    for topic, items in groupby(outgoing, key=lambda item: item["topic"]):
        await bus.publish_envelopes(topic, [decode_structured(i["envelope"]) for i in items])


async def forget_sent(store: SagaStore, saga_id: str, sent: set[str]) -> SagaState | None:
    """Drop the messages whose ids are in ``sent`` from the saga's ``outgoing``; returns
    the saga as saved. Gives up (``None``) if other changes keep winning: what stays
    is sent again with the same ids, which consumers deduplicate."""
    for _ in range(10):
        try:
            async with store.unit_of_work() as session:
                state = await session.load(saga_id)
                if state is None:
                    return None
                keep = [item for item in state.outgoing if item["id"] not in sent]
                if len(keep) != len(state.outgoing):
                    state.outgoing = keep
                    await session.update(state)
            return state
        except SagaConcurrencyError:
            continue
    return None
