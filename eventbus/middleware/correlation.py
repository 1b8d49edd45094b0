"""Correlation and causation: make the handled envelope current while the handler runs."""

from __future__ import annotations

from eventbus.context import Context, current_envelope
from eventbus.middleware.base import Next


async def correlation(ctx: Context, call_next: Next) -> None:
    """Publishes made during the handler (through ``ctx`` or the bus) inherit the
    flow's correlation id and name this message as their cause."""
    token = current_envelope.set(ctx.envelope)
    try:
        await call_next(ctx)
    finally:
        current_envelope.reset(token)
