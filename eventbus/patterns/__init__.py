"""Event-driven patterns on top of the bus: event sourcing, CQRS, sagas, outbox."""

from eventbus.patterns.cqrs import *  # noqa: F403  (CQRS: pat-cqrs)
from eventbus.patterns.eventsourcing import *  # noqa: F403  (event sourcing: pat-es)
