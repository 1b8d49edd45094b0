"""CQRS: a command bus (one handler per command, in-process or over the broker) and
projections (read models with their checkpoint in the read model's transaction).

Request/reply over any broker is the bus's own ``EventBus.request``. See
``docs/patterns/cqrs.md``.
"""

from eventbus.patterns.cqrs.commands import CommandBus, DuplicateHandlerError, NoHandlerError
from eventbus.patterns.cqrs.projections import Projection, ProjectionHealth

__all__ = [
    "CommandBus",
    "DuplicateHandlerError",
    "NoHandlerError",
    "Projection",
    "ProjectionHealth",
]
