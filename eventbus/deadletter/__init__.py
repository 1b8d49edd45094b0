"""Deprecated: use :mod:`eventbus.deadletters`. The names of this module keep working
for one release; reading one warns once, naming its new home.

A package rather than a ``deadletter.py`` file, so that git still sees the old file as
renamed to ``eventbus/deadletters/letters.py`` and carries edits made to it on other
branches over to the new path.
"""

from eventbus._deprecation import moved

# Each new home, and the names it holds now (eventbus.deadletters re-exports the
# names of eventbus.deadletters.letters a user is meant to use).
__getattr__ = moved(
    __name__,
    {
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
    },
)
