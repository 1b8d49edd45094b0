"""Event-driven patterns on top of the bus: event sourcing, CQRS, sagas, outbox."""

from eventbus.patterns.outbox import Outbox as Outbox, OutboxRelay as OutboxRelay  # noqa: I001
from eventbus.patterns.sagas import *  # noqa: F403  (sagas: its __all__)
