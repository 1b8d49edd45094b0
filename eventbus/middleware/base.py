"""Middleware: a small async callable taking the context and the next step.

::

    async def timing(ctx: Context, call_next: Next) -> None:
        started = time.perf_counter()
        try:
            await call_next(ctx)
        finally:
            ctx.logger.info("took %.3fs", time.perf_counter() - started)

Order, outermost first, for every subscription: correlation, then the bus-wide
middleware, then the subscription's own, then dead-letter, idempotency, retry,
timeout, and finally the handler.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from eventbus.context import Context

Next = Callable[[Context], Awaitable[None]]
Middleware = Callable[[Context, Next], Awaitable[None]]


class RedeliveryRequested(Exception):
    """Raised inside the chain to have the broker redeliver the message after ``delay``."""

    def __init__(self, delay: float, reason: str = "") -> None:
        super().__init__(reason or f"redeliver in {delay:.3f}s")
        self.delay = delay


def compose(middleware: Sequence[Middleware], handler: Next) -> Next:
    """Wrap ``handler`` in ``middleware``, the first element outermost."""
    step = handler
    for layer in reversed(middleware):
        step = _bind(layer, step)
    return step


def _bind(layer: Middleware, inner: Next) -> Next:
    async def step(ctx: Context) -> None:
        await layer(ctx, inner)

    return step
