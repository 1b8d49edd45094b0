"""Deprecated: use :mod:`eventbus.deadletters` (``DeadLetters`` and what it reads and
writes). The names of this module keep working for one release; reading one warns
once, naming its new home.

A package rather than a ``dlq.py`` file, so that git still sees the old file as
renamed to ``eventbus/deadletters/tooling.py`` and carries edits made to it on other
branches over to the new path.
"""

from typing import Any

from eventbus._deprecation import renamed

_PACKAGE = (  # re-exported by eventbus.deadletters
    "PURGED_TYPE",
    "REPLAYED_TYPE",
    "REPLAY_GROUP",
    "DeadLetters",
    "ListedDeadLetter",
    "replayed_topic",
)
_TOOLING = ("Progress", "State")  # only in eventbus.deadletters.tooling


def __getattr__(name: str) -> Any:
    import importlib

    home = (
        "eventbus.deadletters"
        if name in _PACKAGE
        else "eventbus.deadletters.tooling"
        if name in _TOOLING
        else ""
    )
    table = (
        {name: (f"{home}.{name}", lambda: getattr(importlib.import_module(home), name))}
        if home
        else {}
    )
    return renamed(__name__, name, table)
