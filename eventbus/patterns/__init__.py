"""Event-driven patterns on top of the bus: event sourcing, CQRS, sagas, outbox."""

from typing import Any

from eventbus._deprecation import Renamed, renamed
from eventbus.patterns import ordering as _ordering
from eventbus.patterns import sagas as _sagas
from eventbus.patterns.cqrs import *  # noqa: F403  (CQRS: pat-cqrs)
from eventbus.patterns.design import IntegrationEvents as IntegrationEvents
from eventbus.patterns.eventsourcing import *  # noqa: F403  (event sourcing: pat-es)
from eventbus.patterns.inbox import Inbox as Inbox
from eventbus.patterns.ordering import EarlyEventError as EarlyEventError
from eventbus.patterns.ordering import Resequencer as Resequencer
from eventbus.patterns.ordering import StaleEvent as StaleEvent
from eventbus.patterns.outbox import Outbox as Outbox
from eventbus.patterns.outbox import OutboxRelay as OutboxRelay
from eventbus.patterns.sagas import *  # noqa: F403  (sagas: its __all__)

# Renamed for one vocabulary (exceptions end in Error, SQL in capitals); the old
# spelling warns for one release.
_RENAMED: Renamed = {
    "SqlSagaStore": ("eventbus.patterns.sagas.SQLSagaStore", lambda: _sagas.SQLSagaStore),
    "SagaNotFound": ("eventbus.patterns.sagas.SagaNotFoundError", lambda: _sagas.SagaNotFoundError),
    "SagaAlreadyExists": (
        "eventbus.patterns.sagas.SagaAlreadyExistsError",
        lambda: _sagas.SagaAlreadyExistsError,
    ),
    "StepFailed": ("eventbus.patterns.sagas.StepFailedError", lambda: _sagas.StepFailedError),
    "SqlSequenceStore": (
        "eventbus.patterns.ordering.SQLSequenceStore",
        lambda: _ordering.SQLSequenceStore,
    ),
    "EarlyEvent": ("eventbus.patterns.ordering.EarlyEventError", lambda: _ordering.EarlyEventError),
}


def __getattr__(name: str) -> Any:
    # The two guards Resequencer replaced: importable for one release, with a warning.
    if name in ("OrderingGuard", "SequenceGuard", "ParkedEvent"):
        from eventbus.patterns.ordering.legacy import deprecated

        return deprecated(name)
    return renamed(__name__, name, _RENAMED)
