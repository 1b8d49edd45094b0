"""Handler timeout: a handler that runs too long fails like one that raised."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from eventbus.context import Context
from eventbus.errors import HandlerTimeoutError
from eventbus.middleware.base import Next


@dataclass(frozen=True, slots=True)
class Timeout:
    """Cancel the handler after ``seconds`` and raise :class:`HandlerTimeoutError`.

    A ``TimeoutError`` the handler raises itself, before the deadline, passes
    through unchanged: it is the handler's failure, not a timeout of the handler.
    """

    seconds: float

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        deadline = asyncio.timeout(self.seconds)
        try:
            async with deadline:
                await call_next(ctx)
        except TimeoutError as exc:
            if not deadline.expired():
                raise  # the handler's own timeout (an HTTP call, a lock): its failure
            raise HandlerTimeoutError(
                f"handler for event {ctx.envelope.id} ({ctx.envelope.type}) on topic "
                f"{ctx.topic!r} group {ctx.group!r} took longer than {self.seconds}s"
            ) from exc
