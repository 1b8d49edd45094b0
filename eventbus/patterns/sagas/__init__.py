"""Sagas: orchestrated (persisted, with compensations and timeouts), choreographed
(reacting services publishing compensating events), and an out-of-order guard."""

from eventbus.patterns.sagas.choreography import Choreography, StepFailed, transaction_of
from eventbus.patterns.sagas.definition import SagaContext, SagaDefinition, Step, StepAction
from eventbus.patterns.sagas.orchestrator import SagaOrchestrator
from eventbus.patterns.sagas.ordering import (
    MemorySequenceStore,
    ParkedEvent,
    SequenceGuard,
    SequenceStore,
    SqlSequenceStore,
)
from eventbus.patterns.sagas.publishing import SagaPublisher
from eventbus.patterns.sagas.state import (
    MemorySagaStore,
    SagaAlreadyExists,
    SagaConcurrencyError,
    SagaError,
    SagaNotFound,
    SagaPublishError,
    SagaSession,
    SagaState,
    SagaStatus,
    SagaStore,
    SqlSagaStore,
)

__all__ = [
    "Choreography",
    "MemorySagaStore",
    "MemorySequenceStore",
    "ParkedEvent",
    "SagaAlreadyExists",
    "SagaConcurrencyError",
    "SagaContext",
    "SagaDefinition",
    "SagaError",
    "SagaNotFound",
    "SagaOrchestrator",
    "SagaPublishError",
    "SagaPublisher",
    "SagaSession",
    "SagaState",
    "SagaStatus",
    "SagaStore",
    "SequenceGuard",
    "SequenceStore",
    "SqlSagaStore",
    "SqlSequenceStore",
    "Step",
    "StepAction",
    "StepFailed",
    "transaction_of",
]
