"""Dead letters: a message that failed for good is kept, with why, on a DLQ topic.

The DLQ topic is ``<topic>.<group>.dlq`` on the same broker. The dead letter is
the original envelope (same id, type, data, correlation) plus extension
attributes saying what happened; :mod:`eventbus.dlq` lists and replays them.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

from eventbus.adapter import Adapter, Delivery
from eventbus.context import Context
from eventbus.envelope import Envelope, format_time, utcnow
from eventbus.middleware.base import Next, RedeliveryRequested

UNDECODABLE_TYPE = "eventbus.undecodable"
DLQ_EXTENSIONS = (
    "dlqreason",
    "dlqexception",
    "dlqmessage",
    "dlqtraceback",
    "dlqattempts",
    "dlqtopic",
    "dlqgroup",
    "dlqfailedat",
)
_MAX_TRACEBACK = 4000


def dlq_topic(topic: str, group: str) -> str:
    """The dead-letter topic of ``topic`` for ``group``."""
    return f"{topic}.{group}.dlq"


def dead_letter_envelope(
    envelope: Envelope,
    *,
    reason: str,
    topic: str,
    group: str,
    attempts: int,
    exc: BaseException | None = None,
) -> Envelope:
    """``envelope`` annotated with why and where it failed."""
    extensions = {k: v for k, v in envelope.extensions.items() if k not in DLQ_EXTENSIONS}
    extensions.update(
        dlqreason=reason,
        dlqattempts=str(attempts),
        dlqtopic=topic,
        dlqgroup=group,
        dlqfailedat=format_time(utcnow()),
    )
    if exc is not None:
        extensions["dlqexception"] = f"{type(exc).__module__}.{type(exc).__qualname__}"
        extensions["dlqmessage"] = str(exc)[:1000]
        text = "".join(traceback.format_exception(exc))
        extensions["dlqtraceback"] = text[-_MAX_TRACEBACK:]
    return envelope.evolve(extensions=extensions)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Middleware: on a final failure, publish the dead letter and let the message be acked.

    If publishing the dead letter fails too, the error propagates and the
    dispatcher nacks the message, so nothing is lost.
    """

    adapter: Adapter

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        try:
            await call_next(ctx)
        except RedeliveryRequested:
            raise
        except Exception as exc:
            attempts = int(ctx.items.get("attempts", ctx.attempt))
            dead = dead_letter_envelope(
                ctx.envelope,
                reason=f"{type(exc).__name__}: {exc}"[:500],
                topic=ctx.topic,
                group=ctx.group,
                attempts=attempts,
                exc=exc,
            )
            await self.adapter.publish(dlq_topic(ctx.topic, ctx.group), [dead])
            ctx.logger.error(
                "dead-lettered after %d attempt(s) to %s: %s: %s",
                attempts, dlq_topic(ctx.topic, ctx.group), type(exc).__name__, exc,
            )


async def dead_letter_undecodable(adapter: Adapter, delivery: Delivery) -> Envelope:
    """Keep bytes that are not a CloudEvent on the DLQ, wrapped in an envelope that says so."""
    wrapper = Envelope.create(
        type=UNDECODABLE_TYPE,
        source="eventbus",
        data=delivery.raw or b"",
        datacontenttype="application/octet-stream",
    )
    dead = dead_letter_envelope(
        wrapper,
        reason=f"undecodable: {delivery.decode_error}"[:500],
        topic=delivery.topic,
        group=delivery.group,
        attempts=delivery.attempt,
    )
    await adapter.publish(dlq_topic(delivery.topic, delivery.group), [dead])
    return dead
