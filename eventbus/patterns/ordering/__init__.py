"""Events out of order: apply each entity's events once, in sequence.

One concept, :class:`Resequencer`, with two stores for its per-entity marks:
:class:`MemorySequenceStore` (this process) and :class:`SQLSequenceStore` (SQLite or
PostgreSQL, in the handler's transaction). An early event waits in the broker (it
is not acknowledged), a stale one is ignored or kept in the store: see
:mod:`eventbus.patterns.ordering.guard`.

``OrderingGuard`` (this module) and ``SequenceGuard`` (``eventbus.patterns.sagas``)
still import for one release, with a ``DeprecationWarning`` naming what to use.
"""

from __future__ import annotations

from typing import Any

from eventbus._deprecation import Renamed, renamed
from eventbus.patterns.ordering.guard import _RENAMED as _GUARD_RENAMED
from eventbus.patterns.ordering.guard import (
    EarlyEventError,
    GapPolicy,
    Resequencer,
    StalePolicy,
    Verdict,
    classify,
)
from eventbus.patterns.ordering.stores import _RENAMED as _STORES_RENAMED
from eventbus.patterns.ordering.stores import (
    MemorySequenceStore,
    SequenceSession,
    SequenceStore,
    SQLSequenceStore,
    StaleEvent,
)

__all__ = [
    "EarlyEventError",
    "GapPolicy",
    "MemorySequenceStore",
    "Resequencer",
    "SQLSequenceStore",
    "SequenceSession",
    "SequenceStore",
    "StaleEvent",
    "StalePolicy",
    "Verdict",
    "classify",
]


# The names its modules renamed for one vocabulary (exceptions end in Error, SQL in
# capitals) warn here too, for one release.
_RENAMED: Renamed = {**_STORES_RENAMED, **_GUARD_RENAMED}


def __getattr__(name: str) -> Any:
    if name == "OrderingGuard":
        from eventbus.patterns.ordering.legacy import deprecated

        return deprecated(name)
    return renamed(__name__, name, _RENAMED)
