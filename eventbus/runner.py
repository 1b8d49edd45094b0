"""One consumer of a (topic, group): fetch, dispatch by type to handlers, settle.

A :class:`Runner` is composed of four parts, each a class given its collaborators:

- :class:`~eventbus.supervision.Supervision`: the fetch loop, re-subscribing with
  backoff, dying for good, the stall watch and the subscription's health;
- :class:`~eventbus.lanes.Lanes`: routing deliveries by key to ``concurrency``
  lanes (per-key order, unrelated keys in parallel), the idle pool, batches, and
  dropping work of a lost subscription;
- :class:`~eventbus.settlement.Settlement`: ack, nack, the failed-ack fallback and
  undecodable messages;
- :class:`~eventbus.invocation.Invocation`: handler lookup, decoding, run counting,
  and the middleware chain (composed, or fused when its layers allow).

The runner builds them; :meth:`Runner.handle` takes a delivery through invocation and settlement.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from eventbus.adapter import Adapter, Delivery
from eventbus.backoff import Backoff
from eventbus.batching import BatchRun
from eventbus.context import Publisher, current_envelope, handler_context
from eventbus.events import Registry
from eventbus.invocation import WATCH_FAILED, Invocation, watch_failed
from eventbus.lanes import Lanes, Progress
from eventbus.middleware.base import SKIP, Middleware, RedeliveryRequested
from eventbus.runs import counter_for
from eventbus.settlement import REDELIVERY_BACKOFF, ForeignMessages, Settlement
from eventbus.spec import SubscriptionSpec
from eventbus.supervision import SubscriptionHealth, SubscriptionState, Supervision
from eventbus.watchdog import SlowHandlerWatch

__all__ = ["REDELIVERY_BACKOFF", "Runner", "SubscriptionHealth", "SubscriptionState"]

log = logging.getLogger("eventbus.runner")


class Runner:
    """Runs one :class:`SubscriptionSpec` on ``adapter``: fetch, route to lanes, run the
    ``middleware`` chain around the handler, settle.

    ``publisher`` is what handlers reply on (``ctx.publish``/``ctx.send``);
    ``prefetch`` is per lane; ``dead_letter`` says whether undecodable messages are
    kept on the DLQ (else they are rejected and logged), as for every other failure.

    When the subscription fails it subscribes again after a ``reconnect`` backoff,
    logging each time. It is *dead for good* (``on_dead`` is called, nothing more is
    consumed) when the failure is a :class:`~eventbus.errors.ConfigurationError`, or
    when any other error that is not a :class:`~eventbus.errors.BrokerConnectionError`
    (an untranslated client error, an iterator that ends by itself) repeats
    ``max_failures`` times in a row without a delivery being handled in between
    (a subscription that hands out a message and breaks every time is not
    making progress: its work goes back to the broker each time). Connection
    errors are retried for as long as the runner runs (state ``reconnecting``).
    """

    def __init__(
        self,
        adapter: Adapter,
        spec: SubscriptionSpec,
        *,
        middleware: Sequence[Middleware],
        registry: Registry,
        publisher: Publisher,
        prefetch: int = 8,
        dead_letter: bool = True,
        reconnect: Backoff | None = None,
        max_failures: int = 5,
        on_dead: Callable[[Runner], None] | None = None,
        warn_after: float | None = None,
        stall_after: float | None = 60.0,
        redelivery_backoff: Backoff | None = None,
    ) -> None:
        self.adapter = adapter
        self.spec = spec
        self.publisher = publisher
        self.runs = counter_for(adapter.url, spec.topic, spec.group)
        self.progress = progress = Progress()
        self.invocation = Invocation(
            spec, registry, self.runs, middleware, stopping=self._is_stopping
        )
        observers = self.invocation.observers
        self.foreign = ForeignMessages(spec, adapter.url)
        self.settlement = Settlement(
            adapter,
            dead_letter=dead_letter,
            redelivery_backoff=redelivery_backoff,
            observers=observers,
        )
        batches = None
        if spec.batch is not None:
            batches = BatchRun(
                spec,
                registry,
                self.runs,
                publisher,
                handle=self.handle,
                ack=self.settlement.ack,
                stopping=self._is_stopping,
                observers=observers,
            )
        self.lanes = Lanes(
            spec,
            progress,
            self.runs,
            handle=self.handle,
            nack=self.settlement.nack,
            run_batch=batches.run if batches is not None else None,
            decode=self.foreign.read if spec.wire is not None else None,
        )
        self.supervision = Supervision(
            adapter,
            spec,
            progress,
            self.lanes,
            prefetch=prefetch,
            reconnect=reconnect,
            max_failures=max_failures,
            stall_after=stall_after,
            on_dead=(lambda: on_dead(self)) if on_dead is not None else None,
        )
        # A handler still running after warn_after seconds is reported (a hang made
        # visible); None turns the watch off.
        self._watch = SlowHandlerWatch(warn_after) if warn_after else None
        # handle() runs once per message: the steps it takes, looked up once here.
        self._correlate = self.invocation.correlate
        self._fused = self.invocation.fused and not self.invocation.guarded
        self._guard = self.invocation.guard
        self._refusals = self.invocation.refusals
        self._prepare = self.invocation.prepare
        self._chain = self.invocation.chain
        self._watcher = self.invocation.watcher
        self._seen = self.runs.seen
        self._finished = self.runs.finished

    def _is_stopping(self) -> bool:
        return self.progress.stopping

    def health(self) -> SubscriptionHealth:
        """This subscription's state and, unless running, the last error."""
        return self.supervision.health()

    async def backlog(self, timeout: float = 5.0) -> int | None:
        """What the broker holds for this group now, ``None`` when it cannot tell (or
        did not answer within ``timeout``); never raises."""
        return await self.supervision.read_backlog(timeout)

    async def start(self) -> None:
        """Subscribe (failing fast if the broker refuses) and start fetching."""
        await self.supervision.subscribe()
        self.lanes.start()
        if self._watch is not None:
            self._watch.start()
        self.supervision.start()
        log.info(
            "subscribed to %s as group %s on %s: delivery %s%s",
            self.spec.topic,
            self.spec.group,
            type(self.adapter).__name__,
            self.spec.guarantee,
            "" if self.spec.delivery else " (the broker's strongest)",
        )

    async def handle(self, delivery: Delivery) -> None:
        """Run one delivery through the chain and settle it."""
        envelope = delivery.envelope
        try:
            if envelope is None:
                envelope = self.foreign.read(delivery)
                if envelope is None:
                    await self.settlement.undecodable(delivery)
                    return
            previous = self._seen(delivery)
            if self.spec.mode == "at_most_once":
                await delivery.ack()
            ctx = handler_context(self.publisher, delivery, envelope, previous)
            watch = self._watch
            if watch is not None:
                watch.running[delivery] = watch.stamp  # watch.begin(delivery), inlined
            try:
                token = current_envelope.set(envelope) if self._correlate else None
                # Observing layers (tracing, metrics) around the rest of the chain.
                watcher = self._watcher
                mark = None
                if watcher is not None:
                    try:
                        mark = watcher.begin(ctx)
                    except Exception as exc:  # an observer's failure is not the handling's
                        mark = watch_failed(watcher, "begin", exc)
                try:
                    guard = self._guard
                    if guard is not None and not ctx.previous_attempts:
                        # Fused around a guard, a first delivery (no layer refuses one):
                        # its enter, the handler and its leave called here, one
                        # coroutine less; a failure goes to the invocation's steps.
                        try:
                            entered = guard[0](ctx)
                        except Exception as exc:
                            await self.invocation.guard_refused(ctx, exc)
                        else:
                            if entered is not SKIP:
                                try:
                                    call = self._prepare(ctx)
                                    if call is not None:
                                        ctx.result = await call
                                except BaseException as exc:
                                    await self.invocation.guarded_failed(ctx, entered, exc)
                                else:
                                    guard[1](ctx, entered)
                    elif not self._fused:
                        await self._chain(ctx)
                    else:
                        # The chain's layers act only on failure: call the handler
                        # directly (one coroutine, not one per layer) and hand a
                        # failure to their recover() steps, as their __call__ would.
                        failure: Exception | None = None
                        refused = None
                        try:
                            if ctx.previous_attempts and self._refusals:
                                # Only a message that ran before may be refused (the
                                # protocol's promise): a first delivery skips the calls.
                                refused = self.invocation.refusal(ctx)
                            call = self._prepare(ctx) if refused is None else None
                            if call is not None:
                                ctx.result = await call
                        except asyncio.CancelledError as exc:
                            failure = self.invocation.cancelled(ctx, exc)
                            failure.__cause__ = exc
                        except Exception as exc:
                            failure = exc
                        if refused is not None:
                            await self.invocation.recover(ctx, *refused)
                        elif failure is not None:
                            await self.invocation.recover(ctx, failure)
                except BaseException as escaped:
                    if watcher is not None and mark is not WATCH_FAILED:
                        try:
                            watcher.end(ctx, mark, escaped)
                        except Exception as exc:
                            watch_failed(watcher, "end", exc)
                    raise
                else:
                    if watcher is not None and mark is not WATCH_FAILED:
                        try:
                            watcher.end(ctx, mark, None)
                        except Exception as exc:
                            watch_failed(watcher, "end", exc)
                finally:
                    if token is not None:
                        current_envelope.reset(token)
            finally:
                if watch is not None:
                    watch.running.pop(delivery, None)  # watch.end(delivery)
        except RedeliveryRequested as request:
            await self.settlement.nack(delivery, request.delay)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.settlement.redeliver(delivery, envelope, exc)
            return
        self._finished(envelope.id)
        if delivery.settled is None:  # settlement.ack(delivery), one coroutine less
            try:
                await delivery.ack()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self.settlement.ack_failed(delivery, exc)

    async def stop(self, timeout: float) -> None:
        """Stop fetching, finish what was fetched within ``timeout``, then close."""
        self.progress.stopping = True
        await self.supervision.stop_fetching(timeout)
        await self.lanes.stop(timeout)
        await self.supervision.close()
        if self._watch is not None:
            await self._watch.stop()
