"""Event-driven patterns on top of the bus: event sourcing, CQRS, sagas, outbox."""
