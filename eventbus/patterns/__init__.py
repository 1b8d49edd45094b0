"""Event-driven patterns on top of the bus: event sourcing, CQRS, sagas, outbox."""

from eventbus.patterns.outbox import Outbox as Outbox, OutboxRelay as OutboxRelay  # noqa: I001
