"""Deprecated: use :mod:`eventbus.deadletters`. Reading a name warns once, naming its
new home (the table is ``eventbus.deadletters._moved.DEADLETTER``)."""

from eventbus._deprecation import moved
from eventbus.deadletters._moved import DEADLETTER

__getattr__ = moved(__name__, DEADLETTER)
