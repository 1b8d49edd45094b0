"""Deprecated: use :mod:`eventbus.deadletters`. The names of this module keep working
for one release; reading one warns once, naming its new home.

A package rather than a ``deadletter.py`` file, so that git still sees the old file as
renamed to ``eventbus/deadletters/letters.py`` and carries edits made to it on other
branches over to the new path.
"""

from typing import Any

from eventbus._deprecation import renamed

_PACKAGE = (  # re-exported by eventbus.deadletters
    "DLQ_EXTENSIONS",
    "UNDECODABLE_TYPE",
    "DeadLetterRecord",
    "dead_letter",
    "dead_letter_envelope",
    "dead_letter_undecodable",
    "publish_dead_letter",
)
_LETTERS = (  # only in eventbus.deadletters.letters
    "MAX_MESSAGE",
    "MAX_REASON",
    "MAX_TRACEBACK",
    "Logger",
    "decode_headers",
    "encode_headers",
    "shrink_stages",
)
_CONTRACT = ("broker_dedupe_id", "replaying")  # eventbus.adapter_names


def _get(module: str, name: str) -> Any:
    import importlib

    return getattr(importlib.import_module(module), name)


def __getattr__(name: str) -> Any:
    if name in _PACKAGE or name == "dlq_topic":
        home = "eventbus.deadletters"
    elif name in _LETTERS:
        home = "eventbus.deadletters.letters"
    elif name in _CONTRACT:
        home = "eventbus.adapter_names"
    else:
        home = ""
    table = {name: (f"{home}.{name}", lambda: _get(home, name))} if home else {}
    return renamed(__name__, name, table)
