"""Correlation and causation: make the handled envelope current while the handler runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from eventbus.context import Context, current_envelope
from eventbus.middleware.base import Next


@dataclass(frozen=True, slots=True)
class Correlation:
    """Publishes made during the handler (through ``ctx`` or the bus) inherit the
    flow's correlation id and name this message as their cause.

    Declares ``sets_current_envelope``: it does nothing else, so as the outermost
    layer the runner sets the envelope itself (one coroutine less per message).
    """

    sets_current_envelope: ClassVar[bool] = True

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        token = current_envelope.set(ctx.envelope)
        try:
            await call_next(ctx)
        finally:
            current_envelope.reset(token)


correlation = Correlation()
"""The correlation step every chain starts with (see :class:`Correlation`)."""
