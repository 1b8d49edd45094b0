"""How a runner settles and calls: the innermost step of the chain, acks and nacks
that survive a failing broker, undecodable messages. Split from
:mod:`eventbus.runner` (which subclasses :class:`Handling`) to keep each file short."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from eventbus.adapter import Adapter, Delivery
from eventbus.batching import run_alone
from eventbus.context import Context
from eventbus.errors import HandlerCancelledError, SchemaError
from eventbus.events import Registry
from eventbus.middleware.deadletter import dead_letter_undecodable
from eventbus.runs import RunCounter
from eventbus.spec import SubscriptionSpec

log = logging.getLogger("eventbus.runner")


class Handling:
    """The per-delivery steps of :class:`~eventbus.runner.Runner` around the chain."""

    adapter: Adapter
    spec: SubscriptionSpec
    registry: Registry
    runs: RunCounter
    dead_letter: bool
    _stopping: bool

    @property
    def stopping(self) -> bool:
        """Whether stop() was called (work cut short now is not the handler's failure)."""
        return self._stopping

    async def ack(self, delivery: Delivery) -> None:
        """Ack ``delivery``; a failed ack hands it back for redelivery (see handle())."""
        await self._ack(delivery)

    async def _undecodable(self, delivery: Delivery) -> None:
        if not self.dead_letter:
            # Dead letters are off for this bus: give the message up visibly rather
            # than loop on it (the broker's own DLQ takes it where it has one).
            log.error(
                "undecodable message %s on %s/%s rejected (dead letters are off): %s",
                delivery.message_id or "?", delivery.topic, delivery.group,
                delivery.decode_error,
            )
            await delivery.reject()
            return
        await dead_letter_undecodable(self.adapter, delivery)
        log.error(
            "undecodable message on %s/%s dead-lettered: %s",
            delivery.topic, delivery.group, delivery.decode_error,
        )
        await self._ack(delivery)

    async def _ack(self, delivery: Delivery) -> None:
        if delivery.settled is not None:
            return
        try:
            await delivery.ack()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._ack_failed(delivery, exc)

    async def _ack_failed(self, delivery: Delivery, exc: Exception) -> None:
        # The broker did not record the ack: as if the connection were lost for
        # this delivery. Hand it back so it comes again (a duplicate, which
        # idempotency absorbs) instead of holding its key and prefetch slot.
        log.warning(
            "ack of message %s on %s/%s failed (%s: %s); it will be redelivered",
            delivery.message_id or "?", delivery.topic, delivery.group,
            type(exc).__name__, exc,
        )
        await self._nack(delivery, 0.0)

    async def _nack(self, delivery: Delivery, delay: float) -> None:
        if delivery.settled is not None:
            return  # at-most-once: already acked, the failure is final by design
        try:
            await delivery.nack(delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("nack of message %s on %s/%s failed (%s: %s); the broker redelivers "
                        "it once the connection is back", delivery.message_id or "?",
                        delivery.topic, delivery.group, type(exc).__name__, exc)

    async def _invoke(self, ctx: Context) -> None:
        """The innermost step: pick the handler by type, decode, call."""
        call = self._prepare(ctx)
        if call is None:
            return
        try:
            ctx.result = await call
        except asyncio.CancelledError as exc:
            raise self._cancelled(ctx, exc) from exc

    def _prepare(self, ctx: Context) -> Awaitable[Any] | None:
        """:meth:`_invoke` up to the call: pick the handler by type, decode, count the
        run; the handler's coroutine, or ``None`` when there is nothing to run."""
        envelope = ctx.envelope
        handler = self.spec.handlers.get(envelope.type) or self.spec.catch_all
        if handler is None:
            if self.registry.get(envelope.type) is None:
                raise SchemaError(
                    f"unknown event type {envelope.type!r} (event {envelope.id}) on topic "
                    f"{ctx.topic!r}: no class is registered and group {ctx.group!r} has no "
                    "handler for it"
                )
            log.debug("no handler in %s for %s; acked", ctx.group, envelope.type)
            return None
        arg: Any
        if handler.wants_envelope:
            arg = envelope
        else:
            event = self.registry.decode(envelope, handler.message_class)
            ctx.event = event
            arg = event
        self.runs.ran(envelope.id)
        if handler.batch:  # an event of a batch subscription, handled on its own
            return run_alone(handler, arg, ctx)
        if handler.wants_context:
            return handler.fn(arg, ctx)
        return handler.fn(arg)

    def _cancelled(self, ctx: Context, exc: asyncio.CancelledError) -> HandlerCancelledError:
        """The handler raised ``exc``: re-raise it when this task is being cancelled,
        else the failure to treat it as (it was not cancelled itself)."""
        envelope = ctx.envelope
        if _cancelling():
            if self._stopping:
                self.runs.not_ran(envelope.id)  # cut short by shutdown: not a failure
            raise exc
        handler = self.spec.handlers.get(envelope.type) or self.spec.catch_all
        name = handler.fn.__qualname__ if handler is not None else "?"
        return HandlerCancelledError(
            f"handler {name} for event {envelope.id} "
            f"({envelope.type}) on topic {ctx.topic!r} group {ctx.group!r} raised "
            "CancelledError although it was not cancelled (did it await a task that "
            "someone else cancelled?); treated as a failure of the handler"
        )


def _cancelling() -> bool:
    """Whether the current task itself is being cancelled (not just seeing a
    CancelledError from something it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
