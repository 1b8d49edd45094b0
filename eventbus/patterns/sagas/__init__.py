"""Sagas: orchestrated (persisted, with compensations and timeouts) and choreographed
(reacting services publishing compensating events). Out-of-order events:
:mod:`eventbus.patterns.ordering` (its stores are exported here too)."""

from typing import Any

from eventbus._deprecation import Renamed, renamed
from eventbus.patterns.ordering.stores import _RENAMED as _STORES_RENAMED
from eventbus.patterns.ordering.stores import MemorySequenceStore, SequenceStore, SQLSequenceStore
from eventbus.patterns.sagas.choreography import _RENAMED as _CHOREOGRAPHY_RENAMED
from eventbus.patterns.sagas.choreography import Choreography, StepFailedError, transaction_of
from eventbus.patterns.sagas.definition import SagaContext, SagaDefinition, Step, StepAction
from eventbus.patterns.sagas.orchestrator import SagaOrchestrator
from eventbus.patterns.sagas.publishing import SagaPublisher
from eventbus.patterns.sagas.state import _RENAMED as _STATE_RENAMED
from eventbus.patterns.sagas.state import (
    MemorySagaStore,
    SagaAlreadyExistsError,
    SagaConcurrencyError,
    SagaError,
    SagaNotFoundError,
    SagaPublishError,
    SagaSession,
    SagaState,
    SagaStatus,
    SagaStore,
    SQLSagaStore,
)

__all__ = [
    "Choreography",
    "MemorySagaStore",
    "MemorySequenceStore",
    "SQLSagaStore",
    "SQLSequenceStore",
    "SagaAlreadyExistsError",
    "SagaConcurrencyError",
    "SagaContext",
    "SagaDefinition",
    "SagaError",
    "SagaNotFoundError",
    "SagaOrchestrator",
    "SagaPublishError",
    "SagaPublisher",
    "SagaSession",
    "SagaState",
    "SagaStatus",
    "SagaStore",
    "SequenceStore",
    "Step",
    "StepAction",
    "StepFailedError",
    "transaction_of",
]


# The names its modules renamed for one vocabulary (exceptions end in Error, SQL in
# capitals) warn here too, for one release.
_RENAMED: Renamed = {**_STATE_RENAMED, **_CHOREOGRAPHY_RENAMED, **_STORES_RENAMED}


def __getattr__(name: str) -> Any:
    if name in ("SequenceGuard", "ParkedEvent"):
        from eventbus.patterns.ordering.legacy import deprecated

        return deprecated(name)
    return renamed(__name__, name, _RENAMED)
