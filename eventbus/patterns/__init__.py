"""Event-driven patterns on top of the bus: event sourcing, CQRS, sagas, outbox."""

# sagas: orchestrated, choreographed, out-of-order guard
from eventbus.patterns.sagas import (
    Choreography as Choreography,
    MemorySagaStore as MemorySagaStore,
    SagaDefinition as SagaDefinition,
    SagaOrchestrator as SagaOrchestrator,
    SequenceGuard as SequenceGuard,
    SqlSagaStore as SqlSagaStore,
    Step as Step,
    StepFailed as StepFailed,
)
