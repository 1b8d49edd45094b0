"""Batch handlers: ``@bus.subscribe(Event, batch=N)`` receives ``list[Event]``.

The runner collects up to ``batch`` deliveries (or what arrived within
``batch_timeout`` seconds of the first one) and calls the handler once with their
events, in delivery order. What happens next:

- the handler returns: every event of the batch is acked together;
- it raises :class:`BatchItemFailed` naming indexes: the others are acked, and
  each named event is handled again **on its own** (the handler gets a list of
  one) through the subscription's usual per-event chain: retry policy, then
  dead-letter, so only the failing events are retried and dead-lettered;
- it raises anything else: the whole batch failed, and every one of its events is
  handled again on its own in the same way (events that succeed alone are acked,
  those that keep failing end on the DLQ one by one, each with its own reason).

The batch run counts as each event's first attempt for the retry budget
(``RetryPolicy.max_attempts``). Deliveries that do not join a batch are handled
on their own at once: undecodable ones, another type, data that fails
validation (poison is dead-lettered), and redeliveries (a message that already
failed is retried alone, so it cannot fail a batch twice). The per-event chain
(bus-wide middleware, dead-letter, retry, timeout) wraps only those single-event
runs; the batch call itself runs with the subscription's ``timeout`` and no
other middleware.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any

from eventbus.adapter import Delivery
from eventbus.context import Context, Publisher
from eventbus.errors import (
    ConfigurationError,
    EventBusError,
    HandlerCancelledError,
    HandlerTimeoutError,
)

if TYPE_CHECKING:
    from eventbus.events import Registry
    from eventbus.runs import RunCounter
    from eventbus.spec import SubscriptionSpec

log = logging.getLogger("eventbus.runner")

DEFAULT_BATCH_TIMEOUT = 0.05
"""Seconds a partial batch waits for more deliveries before it runs anyway."""


class BatchItemFailed(EventBusError):
    """Raised by a batch handler that handled some events and failed others.

    ``indexes`` are positions in the list the handler got; those events are retried
    (and dead-lettered) one by one, the rest are acked. ``cause`` is what went wrong,
    kept as this exception's ``__cause__`` when given::

        @bus.subscribe(Order, batch=100)
        async def store(orders: list[Order]) -> None:
            failed = await db.insert_many(orders)   # positions that were refused
            if failed:
                raise BatchItemFailed(failed)
    """

    def __init__(self, indexes: Sequence[int], cause: BaseException | None = None) -> None:
        self.indexes = sorted(set(indexes))
        super().__init__(
            f"{len(self.indexes)} event(s) of the batch failed (indexes "
            f"{self.indexes[:10]}{' ...' if len(self.indexes) > 10 else ''})"
            + (f": {type(cause).__name__}: {cause}" if cause is not None else "")
        )
        self.__cause__ = cause


def check_batch(
    targets: Sequence[object],
    batch: int | None,
    batch_timeout: float | None,
    delivery: str,
    idempotency: object,
) -> None:
    """Refuse ``subscribe(batch=...)`` options that batches cannot honour, saying why."""
    if batch is None:
        if batch_timeout is not None:
            raise ConfigurationError("batch_timeout= only applies with batch=N")
        return
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigurationError(f"batch must be a positive integer, not {batch!r}")
    if batch_timeout is not None and not batch_timeout > 0:
        raise ConfigurationError(f"batch_timeout must be > 0 seconds, not {batch_timeout!r}")
    if len(targets) != 1 or not isinstance(targets[0], type):
        raise ConfigurationError(
            "subscribe(..., batch=N) takes exactly one event class (the handler gets a "
            "list of that class), not topic names or several classes"
        )
    if delivery != "at_least_once":
        raise ConfigurationError(
            "batch=N needs delivery='at_least_once': a batch is acked after its handler ran"
        )
    if idempotency is not None:
        raise ConfigurationError(
            "batch=N does not support idempotency= yet: a batch call is not deduplicated "
            "per event; deduplicate inside the handler (e.g. an upsert keyed by event id)"
        )


class BatchCollector:
    """Gathers a batch subscription's deliveries and hands each batch to ``queue`` once
    it holds ``spec.batch`` or ``spec.batch_timeout`` has passed since its first."""

    def __init__(self, spec: SubscriptionSpec, queue: Callable[[list[Delivery]], None]) -> None:
        self.size = spec.batch or 1
        self.timeout = spec.batch_timeout or DEFAULT_BATCH_TIMEOUT
        self.queue = queue
        self._batch: list[Delivery] = []
        self._timer: asyncio.TimerHandle | None = None

    @property
    def pending(self) -> bool:
        """Whether deliveries are being collected into a batch not yet queued."""
        return bool(self._batch)

    def add(self, delivery: Delivery) -> None:
        """Collect ``delivery``; a full batch is queued at once."""
        self._batch.append(delivery)
        if len(self._batch) >= self.size:
            self.flush()
        elif len(self._batch) == 1:
            self._timer = asyncio.get_running_loop().call_later(self.timeout, self.flush)

    def flush(self) -> None:
        """Hand what was collected on now (nothing if empty)."""
        batch = self.discard()
        if batch:
            self.queue(batch)

    def discard(self) -> list[Delivery]:
        """Take what was collected back without handing it on."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._batch = self._batch, []
        return batch


@dataclass(eq=False, repr=False)
class BatchRun:
    """Runs the batches of one subscription (see the module doc), settling each event.

    ``handle`` runs one delivery through the subscription's per-event chain (for the
    events that do not join a batch, and each one of a failed batch); ``ack`` acks
    one; ``runs`` counts the batch call as each event's run; ``stopping`` says whether
    the runner is stopping (a batch cut short by shutdown did not run); ``observers``
    (the chain's observing layers) watch each batch call.
    """

    spec: SubscriptionSpec
    registry: Registry
    runs: RunCounter
    publisher: Publisher
    _: KW_ONLY
    handle: Callable[[Delivery], Awaitable[None]]
    ack: Callable[[Delivery], Awaitable[None]]
    stopping: Callable[[], bool]
    observers: Sequence[Any] = ()

    async def run(self, deliveries: list[Delivery]) -> None:
        """Run one batch of deliveries, settling each of them."""
        handler = self.spec.batch_handler
        assert handler is not None and handler.message_class is not None
        ready: list[Delivery] = []
        events: list[Any] = []
        for delivery in deliveries:
            envelope = delivery.envelope
            if (
                envelope is None
                or delivery.attempt > 1
                or envelope.type != handler.message_class.event_type()
            ):
                # Poison, another type, or a redelivery (it failed before): on its own.
                await self.handle(delivery)
                continue
            try:
                event = self.registry.decode(envelope, handler.message_class)
            except Exception:
                await self.handle(delivery)  # fails again there, and is dead-lettered
                continue
            ready.append(delivery)
            events.append(event)
        if not ready:
            return
        contexts = []
        for delivery in ready:
            assert delivery.envelope is not None
            previous = self.runs.seen(delivery)
            self.runs.ran(delivery.envelope.id)
            contexts.append(
                Context(self.publisher, delivery, delivery.envelope, previous_attempts=previous)
            )
        observers = self.observers
        if observers:
            marks = begin_batch(observers, contexts)
            try:
                failed, failure = await self._call(handler, events, contexts)
            except BaseException as exc:  # cut short by shutdown
                end_batch(observers, contexts, marks, range(len(contexts)), exc)
                raise
            end_batch(observers, contexts, marks, failed, failure)
        else:
            failed, _ = await self._call(handler, events, contexts)
        for index, delivery in enumerate(ready):
            if index in failed:
                continue
            assert delivery.envelope is not None
            self.runs.finished(delivery.envelope.id)
            await self.ack(delivery)
        for index in sorted(failed):
            await self.handle(ready[index])

    async def _call(
        self, handler: Any, events: list[Any], contexts: list[Context]
    ) -> tuple[set[int], BaseException | None]:
        """Call the batch handler; the indexes of the events that failed, and why."""
        spec = self.spec
        try:
            if spec.timeout is None:
                await _invoke(handler, events, contexts)
            else:
                deadline = asyncio.timeout(spec.timeout)
                try:
                    async with deadline:
                        await _invoke(handler, events, contexts)
                except TimeoutError as exc:
                    if not deadline.expired():
                        raise
                    raise HandlerTimeoutError(
                        f"batch handler {handler.fn.__qualname__} for {len(events)} event(s) "
                        f"on topic {spec.topic!r} group {spec.group!r} took longer than "
                        f"{spec.timeout}s"
                    ) from exc
            return set(), None
        except BatchItemFailed as exc:
            wrong = [i for i in exc.indexes if not 0 <= i < len(events)]
            if wrong:
                log.error(
                    "batch handler %s named indexes %s outside its batch of %d on "
                    "%s/%s; treating the whole batch as failed",
                    handler.fn.__qualname__,
                    wrong,
                    len(events),
                    spec.topic,
                    spec.group,
                )
                return set(range(len(events))), exc
            log.info(
                "batch of %d on %s/%s: %d event(s) failed (%s); each is retried on its own",
                len(events),
                spec.topic,
                spec.group,
                len(exc.indexes),
                exc,
            )
            return set(exc.indexes), exc
        except asyncio.CancelledError as exc:
            if _cancelling():
                if self.stopping():
                    for ctx in contexts:
                        self.runs.not_ran(ctx.envelope.id)
                raise
            failure: Exception = HandlerCancelledError(
                f"batch handler {handler.fn.__qualname__} raised CancelledError although it "
                "was not cancelled"
            )
            failure.__cause__ = exc
        except Exception as exc:
            failure = exc
        log.warning(
            "batch of %d on %s/%s failed (%s: %s); each event is retried on its own",
            len(events),
            spec.topic,
            spec.group,
            type(failure).__name__,
            failure,
        )
        return set(range(len(events))), failure


def begin_batch(observers: Sequence[Any], contexts: Sequence[Context]) -> list[object]:
    """The observers' ``begin_batch``, outermost first; their marks for :func:`end_batch`."""
    return begin_each(observers, "begin_batch", contexts, None)


def begin_each(observers: Sequence[Any], step: str, arg: object, failed: object) -> list[object]:
    """Each observer's ``step(arg)`` (``begin`` or ``begin_batch``), outermost first:
    their marks, with ``failed`` for each that raised (logged, and the work goes on)."""
    marks: list[object] = []
    for observer in observers:
        try:
            marks.append(getattr(observer, step)(arg))
        except Exception as exc:
            marks.append(failed)
            observer_failed(observer, step, exc)
    return marks


def end_batch(
    observers: Sequence[Any],
    contexts: Sequence[Context],
    marks: list[object],
    failed: Collection[int],
    failure: BaseException | None,
) -> None:
    """The observers' ``end_batch``, innermost first."""
    for observer, mark in zip(reversed(observers), reversed(marks), strict=True):
        try:
            observer.end_batch(contexts, mark, failed, failure)
        except Exception as exc:
            observer_failed(observer, "end_batch", exc)


def observer_failed(observer: object, step: str, exc: Exception, what: str = "batch") -> None:
    """Log that ``observer`` raised in ``step``. Watching must never change what happens
    to a message or a batch (``what``): it is handled as if the observer were not there."""
    log.error(
        "observer %r failed in %s (%s: %s); the %s is handled as if it were not there",
        observer,
        step,
        type(exc).__name__,
        exc,
        what,
        exc_info=exc,
    )


async def run_alone(handler: Any, event: Any, ctx: Context) -> None:
    """Call a batch handler with one event (a retry): ``BatchItemFailed`` naming it is
    its failure, and what caused it (when given) is what the dead letter records."""
    try:
        await _invoke(handler, [event], [ctx])
    except BatchItemFailed as exc:
        if 0 not in exc.indexes:
            return  # it names no event of this one-event batch: handled
        cause = exc.__cause__
        if isinstance(cause, Exception):
            exc.__cause__ = None  # cause gets exc as its context: no cycle
            raise cause  # noqa: B904 - the context chain keeps exc
        raise


async def _invoke(handler: Any, events: list[Any], contexts: list[Context]) -> None:
    if handler.wants_context:
        await handler.fn(events, contexts)
    else:
        await handler.fn(events)


def _cancelling() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
