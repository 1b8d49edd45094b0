"""Event-driven patterns on top of the bus: event sourcing, CQRS, sagas, outbox."""

from eventbus.patterns.cqrs import *  # noqa: F403  (CQRS: pat-cqrs)
from eventbus.patterns.design import IntegrationEvents as IntegrationEvents
from eventbus.patterns.eventsourcing import *  # noqa: F403  (event sourcing: pat-es)
from eventbus.patterns.inbox import Inbox as Inbox
from eventbus.patterns.ordering import EarlyEvent as EarlyEvent
from eventbus.patterns.ordering import Resequencer as Resequencer
from eventbus.patterns.ordering import StaleEvent as StaleEvent
from eventbus.patterns.outbox import Outbox as Outbox
from eventbus.patterns.outbox import OutboxRelay as OutboxRelay
from eventbus.patterns.sagas import *  # noqa: F403  (sagas: its __all__)


def __getattr__(name: str) -> object:
    # The two guards Resequencer replaced: importable for one release, with a warning.
    if name in ("OrderingGuard", "SequenceGuard", "ParkedEvent"):
        from eventbus.patterns.ordering.legacy import deprecated

        return deprecated(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
