"""Moved: the out-of-order guard is :mod:`eventbus.patterns.ordering` now.

``SequenceGuard`` and ``ParkedEvent`` still import from here for one release, with a
``DeprecationWarning``; the stores are the same objects as there.
"""

from __future__ import annotations

from eventbus.patterns.ordering.stores import (
    MemorySequenceStore,
    SequenceSession,
    SequenceStore,
    SQLSequenceStore,
)

__all__ = ["MemorySequenceStore", "SQLSequenceStore", "SequenceSession", "SequenceStore"]


def __getattr__(name: str) -> object:
    if name in ("SequenceGuard", "ParkedEvent"):
        from eventbus.patterns.ordering.legacy import deprecated

        return deprecated(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
