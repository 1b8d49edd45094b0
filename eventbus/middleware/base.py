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
timeout, and finally the handler (assembled by :func:`eventbus.middleware.chain.build_chain`).

Publish middleware wraps every publish instead (``bus.publish``, ``publish_many``,
``send`` and their ``ctx`` forms); it may change the envelopes (tracing headers)
or keep them somewhere else instead of calling on (an outbox)::

    async def stamp(topic: str, envelopes: Sequence[Envelope], call_next: PublishNext) -> None:
        await call_next(topic, [e.evolve(extensions={**e.extensions, "tenant": "a"})
                                for e in envelopes])
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from eventbus.context import Context
from eventbus.envelope import Envelope

Next = Callable[[Context], Awaitable[None]]
Middleware = Callable[[Context, Next], Awaitable[None]]
PublishNext = Callable[[str, Sequence[Envelope]], Awaitable[None]]
PublishMiddleware = Callable[[str, Sequence[Envelope], PublishNext], Awaitable[None]]


class RedeliveryRequested(Exception):
    """Raised inside the chain to have the broker redeliver the message after ``delay``."""

    def __init__(self, delay: float, reason: str = "") -> None:
        super().__init__(reason or f"redeliver in {delay:.3f}s")
        self.delay = delay


def compose(middleware: Sequence[Middleware], handler: Next) -> Next:
    """Wrap ``handler`` in ``middleware``, the first element outermost.

    Composed once per subscription: each step hands the context to its layer
    and returns the layer's coroutine, so a message costs one coroutine per
    layer and no closure.
    """
    step = handler
    for layer in reversed(middleware):
        step = _Step(layer, step)
    return step


class _Step:
    """One layer bound to the rest of the chain (a plain call, not a coroutine)."""

    __slots__ = ("inner", "layer")

    def __init__(self, layer: Middleware, inner: Next) -> None:
        self.layer = layer
        self.inner = inner

    def __call__(self, ctx: Context) -> Awaitable[None]:
        return self.layer(ctx, self.inner)


def compose_publish(middleware: Sequence[PublishMiddleware], publish: PublishNext) -> PublishNext:
    """Wrap ``publish`` in publish ``middleware``, the first element outermost."""
    step = publish
    for layer in reversed(middleware):
        step = _bind_publish(layer, step)
    return step


def _bind_publish(layer: PublishMiddleware, inner: PublishNext) -> PublishNext:
    async def step(topic: str, envelopes: Sequence[Envelope]) -> None:
        await layer(topic, envelopes, inner)

    return step
