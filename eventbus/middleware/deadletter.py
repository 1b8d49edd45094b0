"""The dead-letter step: a message whose handling failed for good goes to the DLQ.

Only failures of the message are dead-lettered: what the handler raised (retries
spent), a poison message, a handler timeout. Failures of the infrastructure
(:class:`~eventbus.errors.InfrastructureError`: the idempotency store is down, the
DLQ publish failed) and redelivery requests pass through, so the runner nacks
the message and it is tried again later. What a dead letter is and where it goes
lives in :mod:`eventbus.deadletters`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from eventbus import deadletters
from eventbus._deprecation import renamed
from eventbus.adapter import Adapter
from eventbus.context import Context
from eventbus.errors import InfrastructureError
from eventbus.incidents import note
from eventbus.middleware.base import Next, RedeliveryRequested

__all__ = ["DeadLetter"]

# What a dead letter is moved to eventbus.deadletters; the old names work for one release.
_MOVED = (
    "DLQ_EXTENSIONS",
    "UNDECODABLE_TYPE",
    "dead_letter_envelope",
    "dead_letter_undecodable",
    "dlq_topic",
)


def __getattr__(name: str) -> Any:
    table = {name: (f"eventbus.deadletters.{name}", lambda: getattr(deadletters, name))}
    return renamed(__name__, name, table if name in _MOVED else {})


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Middleware: on a final failure, publish the dead letter and let the message be acked.

    Infrastructure errors and redelivery requests are re-raised for the runner to
    nack. If publishing the dead letter fails, a
    :class:`~eventbus.errors.DeadLetterPublishError` is raised and the message is
    redelivered, so nothing is lost.

    Declares ``acts_only_on_failure`` (see :mod:`eventbus.middleware.base`): the
    success path does nothing here, so the runner may call :meth:`recover` itself.
    """

    acts_only_on_failure: ClassVar[bool] = True
    adapter: Adapter

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        try:
            await call_next(ctx)
        except Exception as exc:
            await self.recover(ctx, call_next, exc)

    async def recover(self, ctx: Context, call_next: Next, exc: Exception) -> None:
        """What this step does once the rest of the chain raised ``exc``: re-raise
        infrastructure errors and redelivery requests, dead-letter anything else.

        Split from ``__call__`` so the runner can call the handler directly and pay
        for this step only when it fails (the success path does nothing here).
        """
        if isinstance(exc, RedeliveryRequested | InfrastructureError):
            raise exc
        attempts = int(ctx.items.get("attempts", ctx.attempt))
        target = deadletters.dlq_topic(ctx.topic, ctx.group)
        await deadletters.dead_letter(
            self.adapter,
            ctx.envelope,
            reason=f"{type(exc).__name__}: {exc}",
            topic=ctx.topic,
            group=ctx.group,
            attempts=attempts,
            exc=exc,
            logger=ctx.logger,
        )
        note(ctx, "dead_letter", exc, attempt=attempts, target=target)
        ctx.logger.error(
            "dead-lettered after %d attempt(s) to %s: %s: %s",
            attempts,
            target,
            type(exc).__name__,
            exc,
        )
