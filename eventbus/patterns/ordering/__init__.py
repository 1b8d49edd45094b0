"""Events out of order: apply each entity's events once, in sequence.

One concept, :class:`Resequencer`, with two stores for its per-entity marks:
:class:`MemorySequenceStore` (this process) and :class:`SqlSequenceStore` (SQLite or
PostgreSQL, in the handler's transaction). An early event waits in the broker (it
is not acknowledged), a stale one is ignored or kept in the store: see
:mod:`eventbus.patterns.ordering.guard`.

``OrderingGuard`` (this module) and ``SequenceGuard`` (``eventbus.patterns.sagas``)
still import for one release, with a ``DeprecationWarning`` naming what to use.
"""

from __future__ import annotations

from eventbus.patterns.ordering.guard import (
    EarlyEvent,
    GapPolicy,
    Resequencer,
    StalePolicy,
    Verdict,
    classify,
)
from eventbus.patterns.ordering.stores import (
    MemorySequenceStore,
    SequenceSession,
    SequenceStore,
    SqlSequenceStore,
    StaleEvent,
)

__all__ = [
    "EarlyEvent",
    "GapPolicy",
    "MemorySequenceStore",
    "Resequencer",
    "SequenceSession",
    "SequenceStore",
    "SqlSequenceStore",
    "StaleEvent",
    "StalePolicy",
    "Verdict",
    "classify",
]


def __getattr__(name: str) -> object:
    if name == "OrderingGuard":
        from eventbus.patterns.ordering.legacy import deprecated

        return deprecated(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
