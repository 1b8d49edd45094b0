"""Old public names kept for one release: reading one warns, naming its replacement.

A module lists its renamed names and forwards its ``__getattr__`` here::

    _RENAMED = {"SagaNotFound": ("SagaNotFoundError", lambda: SagaNotFoundError)}

    def __getattr__(name: str) -> Any:
        return renamed(__name__, name, _RENAMED)

The old name is the same object as the new one (``except SagaNotFound`` still
catches), so only the spelling is deprecated, not the behaviour.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

Renamed = Mapping[str, tuple[str, Callable[[], Any]]]


def renamed(module: str, name: str, table: Renamed) -> Any:
    """The value of ``module``'s deprecated ``name`` from ``table`` (old name ->
    (what to use instead, getter)), with a :class:`DeprecationWarning`; an unknown
    name raises the usual :class:`AttributeError`."""
    try:
        instead, get = table[name]
    except KeyError:
        raise AttributeError(f"module {module!r} has no attribute {name!r}") from None
    warnings.warn(
        f"{module}.{name} is deprecated and goes away in the next release: use {instead} instead",
        DeprecationWarning,
        stacklevel=3,  # the line that read the old name: renamed <- __getattr__ <- caller
    )
    return get()
