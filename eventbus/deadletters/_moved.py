"""Where the names of the two deprecated modules went, in one table each.

``eventbus.deadletter`` and ``eventbus.dlq`` (0.1) keep their names for one release:
each is a package whose ``__getattr__`` is :func:`eventbus._deprecation.moved` over its
table here. They are packages rather than ``.py`` files so that git sees the old files
as renamed (to ``letters.py`` and ``tooling.py``) and carries edits made to them on
other branches over to the new paths.
"""

from __future__ import annotations

# Each new home, and the names it holds now (eventbus.deadletters re-exports the names
# of letters.py and tooling.py a user is meant to use).
DEADLETTER: dict[str, tuple[str, ...]] = {
    "eventbus.deadletters": (
        "DLQ_EXTENSIONS",
        "UNDECODABLE_TYPE",
        "DeadLetterRecord",
        "dead_letter",
        "dead_letter_envelope",
        "dead_letter_undecodable",
        "dlq_topic",
        "publish_dead_letter",
    ),
    "eventbus.deadletters.letters": (
        "MAX_MESSAGE",
        "MAX_REASON",
        "MAX_TRACEBACK",
        "Logger",
        "decode_headers",
        "encode_headers",
        "shrink_stages",
    ),
    "eventbus.adapter_names": ("broker_dedupe_id", "replaying"),
}
DLQ: dict[str, tuple[str, ...]] = {
    "eventbus.deadletters": (
        "PURGED_TYPE",
        "REPLAYED_TYPE",
        "REPLAY_GROUP",
        "DeadLetters",
        "ListedDeadLetter",
        "replayed_topic",
    ),
    "eventbus.deadletters.tooling": ("Progress", "State"),
}
