"""Sagas: orchestrated (persisted, with compensations and timeouts) and choreographed
(reacting services publishing compensating events). Out-of-order events:
:mod:`eventbus.patterns.ordering` (its stores are exported here too)."""

from eventbus.patterns.ordering.stores import (
    MemorySequenceStore,
    SequenceStore,
    SqlSequenceStore,
)
from eventbus.patterns.sagas.choreography import Choreography, StepFailed, transaction_of
from eventbus.patterns.sagas.definition import SagaContext, SagaDefinition, Step, StepAction
from eventbus.patterns.sagas.orchestrator import SagaOrchestrator
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
    "SequenceStore",
    "SqlSagaStore",
    "SqlSequenceStore",
    "Step",
    "StepAction",
    "StepFailed",
    "transaction_of",
]


def __getattr__(name: str) -> object:
    if name in ("SequenceGuard", "ParkedEvent"):
        from eventbus.patterns.ordering.legacy import deprecated

        return deprecated(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
