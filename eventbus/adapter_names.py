"""The names an adapter needs from the rest of eventbus, in the contract's own module.

Dead letters and their replay are built by the core (:mod:`eventbus.deadletter`,
:mod:`eventbus.dlq`); an adapter only needs to know what they are called on its
broker: the DLQ topic of a (topic, group), the group the DLQ tooling reads a queue
broker's DLQ as, and the id a broker's own duplicate detection should be given. They
live here so an adapter depends on the contract (:mod:`eventbus.adapter`, which
re-exports them) and never on the dead-letter machinery.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eventbus.envelope import Envelope

REPLAY_GROUP = "eventbus-dlq-replay"
"""The consumer group ``eventbus dlq`` reads a DLQ as on brokers that cannot browse
(``Capabilities.browse`` false). An adapter without replay lets this group start from
the earliest message of a DLQ topic (its queue holds every dead letter there is)."""


def dlq_topic(topic: str, group: str) -> str:
    """The dead-letter topic of ``topic`` for ``group``: ``<topic>.<group>.dlq``."""
    return f"{topic}.{group}.dlq"


_REPLAYING: ContextVar[str | None] = ContextVar("eventbus_replaying", default=None)


@contextlib.contextmanager
def replaying(letter: str) -> Iterator[None]:
    """Publishes inside are the replay of dead letter ``letter`` (its DLQ position):
    :func:`broker_dedupe_id` then names the replay, so a broker's duplicate window
    does not take the replayed event for a copy of its first publish."""
    token = _REPLAYING.set(letter)
    try:
        yield
    finally:
        _REPLAYING.reset(token)


def broker_dedupe_id(envelope: Envelope) -> str:
    """The id to give a broker's duplicate detection (JetStream ``Nats-Msg-Id``, SQS FIFO
    ``MessageDeduplicationId``) for ``envelope``.

    An event's own id, so a publish retried after a lost confirmation is stored once.
    A dead letter is a new message, though it carries the event's id: the same event
    failing again after a replay must be stored again, not taken for a copy of its
    first letter, so its dedupe id names the failure too. A replay (published inside
    :func:`replaying`) is a new message as well: its dedupe id names the letter.
    """
    failed_at = envelope.extensions.get("dlqfailedat")
    if failed_at is None:
        letter = _REPLAYING.get()
        return envelope.id if letter is None else f"{envelope.id}.replay.{letter}"
    return f"{envelope.id}.dlq.{envelope.extensions.get('dlqgroup', '')}.{failed_at}"
