"""Deprecated: use :mod:`eventbus.deadletters` (``DeadLetters`` and what it reads and
writes). Reading a name warns once, naming its new home (the table is
``eventbus.deadletters._moved.DLQ``)."""

from eventbus._deprecation import moved
from eventbus.deadletters._moved import DLQ

__getattr__ = moved(__name__, DLQ)
