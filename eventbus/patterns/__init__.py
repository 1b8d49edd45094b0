"""Event-driven patterns on top of the bus: event sourcing, CQRS, sagas, outbox."""

from eventbus.patterns.sagas import (  # noqa: F401  (sagas)
    Choreography,
    MemorySagaStore,
    SagaDefinition,
    SagaOrchestrator,
    SequenceGuard,
    SqlSagaStore,
    Step,
    StepFailed,
)
