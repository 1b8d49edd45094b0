"""Handler timeout: a handler that runs too long fails like one that raised."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from eventbus.context import Context
from eventbus.errors import HandlerTimeoutError
from eventbus.middleware.base import Next


@dataclass(frozen=True, slots=True)
class Timeout:
    """Cancel the handler after ``seconds`` and raise :class:`HandlerTimeoutError`."""

    seconds: float

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        try:
            async with asyncio.timeout(self.seconds):
                await call_next(ctx)
        except TimeoutError as exc:
            raise HandlerTimeoutError(
                f"handler for event {ctx.envelope.id} ({ctx.envelope.type}) on topic "
                f"{ctx.topic!r} group {ctx.group!r} took longer than {self.seconds}s"
            ) from exc
