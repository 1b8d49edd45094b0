"""Dead letters, in one home: what a letter is and how it is listed, replayed, purged.

A message that failed for good is kept on ``<topic>.<group>.dlq`` (:func:`dlq_topic`)
of the same broker, as the original envelope plus ``dlq*`` attributes
(:mod:`eventbus.deadletters.letters`: building, sizing, reading back);
:class:`DeadLetters` lists, replays and purges them
(:mod:`eventbus.deadletters.tooling`). *When* a message is dead-lettered is the
:class:`~eventbus.middleware.DeadLetter` middleware's decision. ``dlq_topic`` and
``REPLAY_GROUP`` live in the adapter contract (:mod:`eventbus.adapter_names`), since
adapters name these topics too; they are re-exported here.
"""

from eventbus.adapter_names import REPLAY_GROUP, dlq_topic
from eventbus.deadletters.letters import (
    DLQ_EXTENSIONS,
    UNDECODABLE_TYPE,
    DeadLetterRecord,
    dead_letter,
    dead_letter_envelope,
    dead_letter_undecodable,
    publish_dead_letter,
)
from eventbus.deadletters.tooling import (
    PURGED_TYPE,
    REPLAYED_TYPE,
    DeadLetters,
    ListedDeadLetter,
    replayed_topic,
)

__all__ = [
    "DLQ_EXTENSIONS",
    "PURGED_TYPE",
    "REPLAYED_TYPE",
    "REPLAY_GROUP",
    "UNDECODABLE_TYPE",
    "DeadLetterRecord",
    "DeadLetters",
    "ListedDeadLetter",
    "dead_letter",
    "dead_letter_envelope",
    "dead_letter_undecodable",
    "dlq_topic",
    "publish_dead_letter",
    "replayed_topic",
]
