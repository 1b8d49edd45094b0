"""Deprecated: use :mod:`eventbus.deadletters` (``DeadLetters`` and what it reads and
writes). The names of this module keep working for one release; reading one warns
once, naming its new home.

A package rather than a ``dlq.py`` file, so that git still sees the old file as
renamed to ``eventbus/deadletters/tooling.py`` and carries edits made to it on other
branches over to the new path.
"""

from eventbus._deprecation import moved

__getattr__ = moved(
    __name__,
    {
        "eventbus.deadletters": (
            "PURGED_TYPE",
            "REPLAYED_TYPE",
            "REPLAY_GROUP",
            "DeadLetters",
            "ListedDeadLetter",
            "replayed_topic",
        ),
        "eventbus.deadletters.tooling": ("Progress", "State"),
    },
)
