"""Choreographed sagas: each service reacts to the previous step's event and publishes
the next, or the failure event that makes the others compensate.

There is no coordinator: the flow is the chain of events. The helpers keep a
service's part of it short and uniform::

    flow = Choreography(bus, group="inventory-service", key=lambda e: e.order_id)

    @flow.step(PaymentCharged, failed=lambda e, why: InventoryReservationFailed(
        order_id=e.order_id, reason=why))
    async def reserve(event: PaymentCharged, ctx: Context) -> InventoryReserved:
        if not in_stock(event):
            raise StepFailedError("out of stock")          # -> InventoryReservationFailed
        return InventoryReserved(order_id=event.order_id, ...)

    @flow.compensation(InventoryReservationFailed)     # in the payment service
    async def refund(event, ctx) -> PaymentRefunded: ...

- a step returns the event(s) to publish (or ``None``); they carry the flow's
  correlation id, are caused by the trigger, and are keyed by ``key`` so one
  entity's events stay in order;
- raising :class:`StepFailedError` publishes ``failed(event, reason)`` instead: the
  compensating chain starts; any other exception is left to the bus (retried,
  then dead-lettered), since it says nothing about the business outcome;
- ``unit_of_work`` (e.g. an outbox's) runs the handler and its publishes in one
  transaction, available to the handler as :func:`transaction_of(ctx) <transaction_of>`;
  ``inbox`` (an :class:`~eventbus.patterns.inbox.Inbox`, with its outbox) does the
  same and also records the event as handled in that transaction, skipping the
  handler for an event handled before: exactly-once effects on that database;
- ``topic`` maps an event class to the topic it travels on (default: its own),
  e.g. to give each environment or test run its own topics;
- ``guard`` (a :class:`~eventbus.patterns.ordering.Resequencer` and a sequence
  function) applies the entity's events in sequence, skipping stale ones.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, Literal, TypeVar

from eventbus._declarations import returned_messages
from eventbus._deprecation import Renamed, renamed
from eventbus.bus import EventBus
from eventbus.context import Context
from eventbus.errors import ConfigurationError
from eventbus.events import Message
from eventbus.patterns.inbox import Inbox
from eventbus.patterns.ordering import Resequencer
from eventbus.patterns.sagas.state import SagaError
from eventbus.patterns.sql import Transaction

logger = logging.getLogger("eventbus.saga")

E = TypeVar("E", bound=Message)
Produced = Message | Sequence[Message] | None
StepHandler = Callable[[E, Context], Awaitable[Produced]]
Runner = Callable[[Any, Context], Awaitable[None]]
UnitOfWork = Callable[[], AbstractAsyncContextManager[Transaction | None]]

_TX = "eventbus.saga.tx"


class StepFailedError(SagaError):
    """Raised by a choreography step whose business outcome is a failure (out of
    stock, card declined): its ``failed`` event is published instead."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def transaction_of(ctx: Context) -> Transaction | None:
    """The transaction a step runs in (with a ``unit_of_work``), else ``None``."""
    tx: Transaction | None = ctx.items.get(_TX)
    return tx


class Choreography:
    """One service's steps and compensations of a choreographed saga, on ``bus``."""

    def __init__(
        self,
        bus: EventBus,
        *,
        group: str,
        key: Callable[[Any], str] | None = None,
        unit_of_work: UnitOfWork | None = None,
        guard: tuple[Resequencer, Callable[[Any], int]] | None = None,
        start_from: Literal["earliest", "latest"] = "earliest",
        topic: Callable[[type[Message]], str] | None = None,
        inbox: Inbox | None = None,
    ) -> None:
        if inbox is not None and unit_of_work is not None:
            raise ConfigurationError(
                f"Choreography(group={group!r}) takes an inbox or a unit_of_work, not both: "
                "give the inbox the outbox (Inbox(db, outbox=outbox)) to have both"
            )
        self.bus = bus
        self.inbox = inbox
        self.topic = topic
        self._routes: dict[str, list[tuple[type[Message], Runner]]] = {}
        self.group = group
        self.key = key
        self.unit_of_work = unit_of_work
        self.guard = guard
        self.start_from = start_from

    def step(
        self, trigger: type[E], *, failed: Callable[[E, str], Message] | None = None
    ) -> Callable[[StepHandler[E]], StepHandler[E]]:
        """Subscribe a forward step on ``trigger``; ``failed`` builds the event published
        when it raises :class:`StepFailedError`."""
        return self._subscribe(trigger, failed, compensating=False)

    def compensation(self, trigger: type[E]) -> Callable[[StepHandler[E]], StepHandler[E]]:
        """Subscribe a compensation on the failure event ``trigger``: it undoes this
        service's step (refund, release) and returns the event saying so."""
        return self._subscribe(trigger, None, compensating=True)

    def _subscribe(
        self, trigger: type[E], failed: Callable[[E, str], Message] | None, compensating: bool
    ) -> Callable[[StepHandler[E]], StepHandler[E]]:
        def decorate(fn: StepHandler[E]) -> StepHandler[E]:
            async def run(event: E, ctx: Context) -> None:
                async with self._transaction(ctx) as tx:
                    if tx is None and self.inbox is not None:
                        return  # the inbox says this event was handled (committed) before
                    ctx.items[_TX] = tx
                    try:
                        if self.guard is not None:
                            guard, sequence = self.guard
                            entity = self.key(event) if self.key is not None else ctx.envelope.id
                            await guard.apply(
                                entity,
                                sequence(event),
                                lambda: self._run(fn, event, ctx, failed, compensating),
                                event=event,
                                ctx=ctx,
                                tx=tx,
                            )
                        else:
                            await self._run(fn, event, ctx, failed, compensating)
                    finally:
                        ctx.items.pop(_TX, None)

            run.__name__ = run.__qualname__ = fn.__name__
            # What a step returns is published: its annotation declares it (AsyncAPI).
            self.bus.publishes(
                *returned_messages(fn), *(returned_messages(failed) if failed is not None else ())
            )
            if self.topic is None:
                self.bus.subscribe(trigger, group=self.group, start_from=self.start_from)(run)
            else:
                self._route(self.topic(trigger), trigger, run)
            return fn

        return decorate

    def _transaction(self, ctx: Context) -> AbstractAsyncContextManager[Transaction | None]:
        if self.inbox is not None:
            return self.inbox.handle(ctx)
        if self.unit_of_work is not None:
            return self.unit_of_work()
        return nullcontext(None)

    def _route(self, topic: str, trigger: type[Message], run: Runner) -> None:
        # One subscription per topic, dispatching by class: a topic carries several types.
        routes = self._routes.get(topic)
        if routes is None:
            routes = self._routes[topic] = []

            async def dispatch(event: Message, ctx: Context) -> None:
                for cls, handler in routes:
                    if isinstance(event, cls):
                        await handler(event, ctx)

            dispatch.__name__ = dispatch.__qualname__ = f"{self.group}:{topic}"
            self.bus.subscribe(topic, group=self.group, start_from=self.start_from)(dispatch)
        routes.append((trigger, run))

    async def _run(
        self,
        fn: StepHandler[E],
        event: E,
        ctx: Context,
        failed: Callable[[E, str], Message] | None,
        compensating: bool,
    ) -> None:
        key = self.key(event) if self.key is not None else None
        try:
            produced = await fn(event, ctx)
        except StepFailedError as exc:
            if failed is None:
                raise
            produced = failed(event, exc.reason)
            logger.info(
                "%s: step %s failed for %s: %s; publishing %s",
                self.group,
                fn.__name__,
                key,
                exc.reason,
                type(produced).__name__,
            )
        if compensating:
            logger.info("%s: compensated %s for %s", self.group, fn.__name__, key)
        if produced is None:
            return
        for message in [produced] if isinstance(produced, Message) else produced:
            topic = self.topic(type(message)) if self.topic is not None else None
            await ctx.publish(message, topic=topic, key=key)


# Renamed for one vocabulary (exceptions end in Error, SQL in capitals); the old
# spelling warns for one release.
_RENAMED: Renamed = {
    "StepFailed": ("eventbus.patterns.sagas.StepFailedError", lambda: StepFailedError)
}


def __getattr__(name: str) -> Any:
    return renamed(__name__, name, _RENAMED)
