"""Old public names kept for one release: reading one warns, naming its replacement.

A module lists its renamed names and forwards its ``__getattr__`` here::

    _RENAMED = {"SagaNotFound": ("SagaNotFoundError", lambda: SagaNotFoundError)}

    def getattr_(name: str) -> Any:
        return renamed(__name__, name, _RENAMED)

A module whose names moved to other modules takes its ``__getattr__`` from
:func:`moved`, which imports each from its new home when it is read.

The old name is the same object as the new one (``except SagaNotFound`` still
catches), so only the spelling is deprecated, not the behaviour.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable, Mapping
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


def moved(module: str, homes: Mapping[str, Iterable[str]]) -> Callable[[str], Any]:
    """A ``__getattr__`` for ``module``, whose names moved: ``homes`` maps each new home
    module to the names it holds now. Reading one warns (see :func:`renamed`) naming
    it in its new home, and imports it from there only then."""
    where = {name: home for home, names in homes.items() for name in names}

    def getattr_(name: str) -> Any:
        home = where.get(name)
        table: Renamed = {}
        if home is not None:
            table = {name: (f"{home}.{name}", lambda: getattr(importlib.import_module(home), name))}
        return renamed(module, name, table)

    return getattr_
