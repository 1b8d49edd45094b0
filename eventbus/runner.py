"""One consumer of a (topic, group): fetch, dispatch by type to handlers, settle.

Deliveries are spread over ``concurrency`` lanes; messages sharing a partition
key always take the same lane, so per-key order holds while unrelated keys run
in parallel. The runner re-subscribes with backoff when its subscription fails
and reports its state (:class:`SubscriptionHealth`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from eventbus.adapter import Adapter, Delivery, SubscribeOptions, Subscription
from eventbus.backoff import Backoff
from eventbus.batching import BatchCollector, run_batch
from eventbus.context import Context, Publisher, current_envelope, handler_context
from eventbus.errors import (
    BrokerConnectionError,
    ConfigurationError,
    EventBusError,
)
from eventbus.events import Registry
from eventbus.handling import Handling, _cancelling
from eventbus.middleware.base import Middleware, Next, RedeliveryRequested, compose
from eventbus.middleware.correlation import correlation
from eventbus.middleware.deadletter import DeadLetter
from eventbus.middleware.retry import Retry
from eventbus.runs import counter_for
from eventbus.spec import SubscriptionSpec
from eventbus.watchdog import SlowHandlerWatch

log = logging.getLogger("eventbus.runner")

REDELIVERY_BACKOFF = Backoff(initial=1.0, max_delay=30.0)
"""Delays of redeliveries after failures outside the handler, by delivery count."""

SubscriptionState = Literal["starting", "running", "stalled", "reconnecting", "dead", "stopped"]


@dataclass(frozen=True, slots=True)
class SubscriptionHealth:
    """The state of one (topic, group) subscription.

    ``running``: fetching; ``stalled``: it received nothing for ``stall_after``
    seconds while the broker holds ``backlog`` messages for its group (it subscribes
    again each time; ``error`` says what it saw); ``reconnecting``: its subscription
    failed and it is subscribing again with backoff (``error`` says why); ``dead``: it
    gave up for good (``error`` says why) and consumes nothing any more; ``stopped``:
    the bus stopped it. ``delivery`` is the guarantee it runs with (``at_least_once``
    or ``at_most_once``: the broker's strongest unless one was asked for);
    ``idle_for`` how long it has made no progress (received or finished nothing).
    """

    topic: str
    group: str
    state: SubscriptionState
    error: str | None = None
    delivery: str = ""
    backlog: int | None = None
    idle_for: float = 0.0


class Runner(Handling):
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
        self.registry = registry
        self.publisher = publisher
        self.prefetch = prefetch
        self.dead_letter = dead_letter
        self.reconnect = reconnect or Backoff(initial=0.05, max_delay=2.0)
        self.max_failures = max_failures
        self.on_dead = on_dead
        self.redelivery_backoff = redelivery_backoff or REDELIVERY_BACKOFF
        # Progress: a count bumped by every delivery received and every one finished;
        # the stall watch compares it between its looks (no clock read per message).
        self.stall_after = stall_after
        self._progress = 0
        self._idle_since = 0.0
        self._backlog: int | None = None
        self._stall_task: asyncio.Task[None] | None = None
        # A handler still running after warn_after seconds is reported (a hang made
        # visible); None turns the watch off.
        self._watch = SlowHandlerWatch(warn_after) if warn_after else None
        # Correlation, when it is the outermost step (the built chain's order), is
        # done by handle() itself: one coroutine less per message.
        self._correlate = bool(middleware) and middleware[0] is correlation
        layers = middleware[1:] if self._correlate else middleware
        self.chain: Next = compose(layers, self._invoke)
        # The default chain (dead-letter, retry) does nothing until the handler
        # fails: handle() then calls the handler itself and hands a failure to the
        # layers' recover() steps, as their __call__ would (no coroutine per layer).
        self._fused = _fusable(layers)
        self._after_retry: Next = compose(layers[1:], self._invoke)
        # One lane without key routing to do: the fetch loop runs each delivery
        # itself (no queue, no task switch), finishing it before taking the next.
        self._inline = max(1, spec.concurrency) == 1 and spec.batch is None
        self._busy = False
        # batch=N: deliveries wait here until the batch is full or its time is up.
        self._batches = BatchCollector(spec, middleware, self._queue_batch)
        self.state: SubscriptionState = "starting"
        self.error: BaseException | None = None
        self.runs = counter_for(adapter.url, spec.topic, spec.group)
        # Work queued in lanes carries the generation of the subscription that handed
        # it out; after that subscription is lost the broker has taken it back, so
        # a lane drops it instead of running it a second time.
        self._generation = 0
        self._progressed = False  # a delivery of this generation reached handle()
        self._lanes: list[asyncio.Queue[tuple[int, Delivery | list[Delivery]] | None]] = []
        # Deliveries routed to each lane and not yet finished (queued + running): a
        # lane's queue is empty while its worker is busy, so qsize alone would send
        # unkeyed messages behind a slow handler while another worker sits idle.
        self._load: list[int] = []
        # Work any lane may run (no key to keep in order) that arrived while no lane
        # was idle: the first lane to finish takes it. Choosing a lane up front by
        # load would be a guess, since a lane that is only waiting for its last
        # ack's broker round trip counts as busy as one whose handler is stuck, and
        # the work could be queued behind the stuck one while the other soon idles.
        # Bounded by the subscription's prefetch.
        self._pool: deque[tuple[int, Delivery | list[Delivery]]] = deque()
        self._lane_tasks: list[asyncio.Task[None]] = []
        self._fetch_task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._stopping = False

    def health(self) -> SubscriptionHealth:
        """This subscription's state and, unless running, the last error."""
        error = None if self.error is None else f"{type(self.error).__name__}: {self.error}"
        idle = 0.0 if not self._idle_since else time.monotonic() - self._idle_since
        return SubscriptionHealth(self.spec.topic, self.spec.group, self.state, error,
                                  self.spec.guarantee, self._backlog, round(idle, 3))

    async def start(self) -> None:
        """Subscribe (failing fast if the broker refuses) and start fetching."""
        self._subscription = await self._subscribe()
        for index in range(0 if self._inline else max(1, self.spec.concurrency)):
            queue: asyncio.Queue[tuple[int, Delivery | list[Delivery]] | None] = asyncio.Queue()
            self._lanes.append(queue)
            self._load.append(0)
            self._lane_tasks.append(asyncio.create_task(self._lane(index, queue)))
        self.state = "running"
        if self._watch is not None:
            self._watch.start()
        self._fetch_task = asyncio.create_task(self._fetch())
        if self.stall_after is not None:
            self._stall_task = asyncio.create_task(self._watch_stalls(self.stall_after))
        log.info("subscribed to %s as group %s on %s: delivery %s%s", self.spec.topic,
                 self.spec.group, type(self.adapter).__name__, self.spec.guarantee,
                 "" if self.spec.delivery else " (the broker's strongest)")

    async def _subscribe(self) -> Subscription:
        lanes = max(1, self.spec.concurrency)
        prefetch = lanes * self.prefetch
        if self.spec.batch is not None:
            # Room for a full batch per lane plus the one being collected.
            prefetch = max(prefetch, self.spec.batch * (lanes + 1))
        options = SubscribeOptions(
            group=self.spec.group,
            prefetch=prefetch,
            start_from=self.spec.start_from,
            delivery=self.spec.delivery,
        )
        return await self.adapter.subscribe(self.spec.topic, options)

    async def _fetch(self) -> None:
        delays = iter(self.reconnect)
        failures = 0  # consecutive failures other than connection errors
        while True:
            error: Exception
            try:
                if self._subscription is None:
                    self._subscription = await self._subscribe()
                if self.state != "stalled":  # a stall ends with progress (_watch_stalls)
                    self.state, self.error = "running", None
                if self._inline:
                    # Each delivery is handled here, as a lane would (no queue, no task
                    # switch, no coroutine besides handle()), before taking the next.
                    async for delivery in self._subscription:
                        if delivery.stale:
                            # Taken back by the broker before it was fetched from the
                            # adapter (a Kafka partition revoked): its new owner has it.
                            self.runs.seen(delivery)
                            log.debug("dropped stale %s of %s/%s", delivery.message_id,
                                      delivery.topic, delivery.group)
                            continue
                        self._busy = self._progressed = True
                        self._progress += 1
                        try:
                            await self.handle(delivery)
                        except asyncio.CancelledError:
                            if _cancelling():
                                raise
                            log.error("message %s on %s/%s: CancelledError escaped the "
                                      "middleware; asking the broker to redeliver",
                                      delivery.message_id, delivery.topic, delivery.group)
                            await self._nack(delivery, 1.0)
                        finally:
                            self._busy = False
                        if self._stopping:
                            return
                elif self.spec.batch is not None:
                    async for delivery in self._subscription:
                        self._progress += 1
                        self._batches.add(delivery)
                else:
                    async for delivery in self._subscription:
                        self._route(delivery)
                if self._stopping:
                    return
                error = EventBusError(
                    f"the subscription to {self.spec.topic!r} as group {self.spec.group!r} "
                    "ended by itself (its adapter's iterator returned while it was open)"
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
            if self._stopping:
                return
            if self._progressed:
                # This subscription got work done before failing: a new series.
                failures, delays = 0, iter(self.reconnect)
            connection = isinstance(error, BrokerConnectionError)
            failures += 0 if connection else 1
            for lost in self._batches.discard():  # the broker takes them back
                self.runs.seen(lost)
            self._generation += 1
            self._progressed = False
            await self._drop_subscription()
            if isinstance(error, ConfigurationError) or failures >= self.max_failures:
                self._die(error, failures)
                return
            delay = next(delays)
            self.state, self.error = "reconnecting", error
            log.log(
                logging.WARNING if connection else logging.ERROR,
                "subscription %s/%s failed (%s: %s); re-subscribing in %.2fs",
                self.spec.topic, self.spec.group, type(error).__name__, error, delay,
                exc_info=None if connection else error,
            )
            await asyncio.sleep(delay)

    def _idle(self) -> bool:
        """Nothing fetched is waiting or running."""
        return not (self._busy or self._pool or self._batches.pending or any(self._load))

    async def _watch_stalls(self, stall_after: float) -> None:
        """Notice a subscription that sits idle while the broker holds its messages.

        A consumer whose broker resources were deleted underneath, or whose pulls go
        nowhere, looks exactly like a quiet one from inside its iterator; only the
        broker's backlog tells them apart. Looked up only after ``stall_after``
        seconds without progress, then once per look while it lasts.
        """
        look = min(max(stall_after / 3, 0.05), 10.0)
        seen = self._progress
        self._idle_since = time.monotonic()
        while not self._stopping:
            await asyncio.sleep(look)
            now = time.monotonic()
            if self._progress != seen or not self._idle():
                seen, self._idle_since, self._backlog = self._progress, now, None
                if self.state == "stalled":
                    log.info("subscription %s/%s is making progress again",
                             self.spec.topic, self.spec.group)
                    self.state, self.error = "running", None
                continue
            if now - self._idle_since < stall_after or self.state not in ("running", "stalled"):
                continue
            subscription = self._subscription
            if subscription is None:
                continue
            try:
                backlog = await asyncio.wait_for(subscription.backlog(), max(look, 5.0))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The broker can't say: the group's resources are gone, or the
                # connection does not answer. Either way nothing is being consumed.
                backlog, why = None, f"its backlog could not be read ({type(exc).__name__}: {exc})"
            else:
                self._backlog = backlog
                if not backlog:
                    continue
                why = f"the broker holds {backlog} message(s) for the group"
            if self._progress != seen or not self._idle() or self._stopping:
                continue
            error = EventBusError(
                f"subscription {self.spec.topic!r}/{self.spec.group!r} received nothing for "
                f"{now - self._idle_since:.1f}s while {why}; subscribing again"
            )
            log.warning("%s", error)
            self.state, self.error = "stalled", error
            await self._resubscribe()

    async def _resubscribe(self) -> None:
        """Start fetching over on a new subscription (the adapter provisions again)."""
        task = self._fetch_task
        if task is not None:
            await self._stop_fetching(task)
        if self._stopping:
            return
        self._generation += 1
        self._progressed = False
        for lost in self._batches.discard():
            self.runs.seen(lost)
        await self._drop_subscription()
        self._fetch_task = asyncio.create_task(self._fetch())

    def _die(self, error: Exception, failures: int) -> None:
        self.state, self.error = "dead", error
        log.error(
            "subscription %s/%s is dead for good after %d failure(s) in a row: %s: %s; "
            "nothing more is consumed until the service restarts",
            self.spec.topic, self.spec.group, max(1, failures), type(error).__name__, error,
        )
        if self.on_dead is not None:
            self.on_dead(self)

    async def _drop_subscription(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        try:
            await subscription.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("closing the failed subscription %s/%s raised %s: %s",
                        self.spec.topic, self.spec.group, type(exc).__name__, exc)

    def _route(self, delivery: Delivery) -> None:
        self._progress += 1
        lanes = self._lanes
        key = delivery.envelope.partitionkey if delivery.envelope is not None else None
        if len(lanes) == 1:
            index = 0
        elif key is not None and self.spec.ordered:
            index = zlib.crc32(key.encode()) % len(lanes)
        else:
            self._to_any_lane((self._generation, delivery))
            return
        self._load[index] += 1
        lanes[index].put_nowait((self._generation, delivery))

    def _queue_batch(self, batch: list[Delivery]) -> None:
        """Queue a collected batch: to one lane, or split by key lane when ordered."""
        lanes = self._lanes
        parts: dict[int, list[Delivery]] = {}
        for delivery in batch:
            envelope = delivery.envelope
            key = envelope.partitionkey if envelope is not None else None
            if key is not None and self.spec.ordered and len(lanes) > 1:
                parts.setdefault(zlib.crc32(key.encode()) % len(lanes), []).append(delivery)
            else:
                parts.setdefault(-1, []).append(delivery)
        for index, part in parts.items():
            if index < 0:
                self._to_any_lane((self._generation, part))
                continue
            self._load[index] += 1
            lanes[index].put_nowait((self._generation, part))

    def _to_any_lane(self, item: tuple[int, Delivery | list[Delivery]]) -> None:
        """Hand ``item`` to an idle lane, or pool it for the first lane to finish."""
        for index, load in enumerate(self._load):
            if load == 0:
                self._load[index] = 1
                self._lanes[index].put_nowait(item)
                return
        self._pool.append(item)

    def _lane_done(self, index: int) -> None:
        """One item of lane ``index`` is finished (settled); an idle lane takes pooled work."""
        self._progress += 1
        self._load[index] -= 1
        if self._load[index] == 0 and self._pool:
            self._load[index] = 1
            self._lanes[index].put_nowait(self._pool.popleft())

    async def _lane(self, index: int,
                    queue: asyncio.Queue[tuple[int, Delivery | list[Delivery]] | None]) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            generation, work = item
            if isinstance(work, list):
                await self._lane_batch(index, generation, work)
                continue
            delivery = work
            try:
                if generation != self._generation or delivery.stale:
                    # Handed out by a subscription since lost, or stale (its Kafka
                    # partition was revoked meanwhile): the broker already took it
                    # back and will deliver it again.
                    self.runs.seen(delivery)
                    log.debug("dropped %s from a lost subscription of %s/%s",
                              delivery.message_id, delivery.topic, delivery.group)
                    continue
                self._progressed = True
                await self.handle(delivery)
            except asyncio.CancelledError:
                if _cancelling():
                    raise
                # Something in the chain outside the handler let a CancelledError
                # out without this lane being cancelled: keep the lane alive.
                log.error("message %s on %s/%s: CancelledError escaped the middleware; "
                          "asking the broker to redeliver", delivery.message_id,
                          delivery.topic, delivery.group)
                await self._nack(delivery, 1.0)
            finally:
                self._lane_done(index)

    async def _lane_batch(self, index: int, generation: int, batch: list[Delivery]) -> None:
        try:
            if generation != self._generation:
                for delivery in batch:
                    self.runs.seen(delivery)  # lost with its subscription, as above
                return
            live = [delivery for delivery in batch if not delivery.stale]
            for delivery in batch:
                if delivery.stale:
                    self.runs.seen(delivery)  # taken back by a rebalance, as above
            if not live:
                return
            self._progressed = True
            await run_batch(self, live)
        except asyncio.CancelledError:
            if _cancelling():
                raise
            log.error("a batch on %s/%s: CancelledError escaped; asking the broker to "
                      "redeliver it", self.spec.topic, self.spec.group)
            for delivery in batch:
                await self._nack(delivery, 1.0)
        finally:
            self._lane_done(index)

    async def handle(self, delivery: Delivery) -> None:
        """Run one delivery through the chain and settle it."""
        envelope = delivery.envelope
        try:
            if envelope is None:
                await self._undecodable(delivery)
                return
            previous = self.runs.seen(delivery)
            if self.spec.mode == "at_most_once":
                await delivery.ack()
            ctx = handler_context(self.publisher, delivery, envelope, previous)
            watch = self._watch
            if watch is not None:
                watch.running[delivery] = watch.stamp  # watch.begin(delivery), inlined
            try:
                token = current_envelope.set(envelope) if self._correlate else None
                try:
                    if self._fused is None:
                        await self.chain(ctx)
                    else:
                        failure: Exception | None = None
                        try:
                            # self._invoke(ctx) written out: one coroutine less.
                            if ctx.previous_attempts:  # a redelivery: budget left?
                                failure = self._fused[0].refuse(ctx)
                            call = self._prepare(ctx) if failure is None else None
                            if call is not None:
                                ctx.result = await call
                        except asyncio.CancelledError as exc:
                            failure = self._cancelled(ctx, exc)
                            failure.__cause__ = exc
                        except Exception as exc:
                            failure = exc
                        if failure is not None:
                            await self._recover(ctx, failure)
                finally:
                    if token is not None:
                        current_envelope.reset(token)
            finally:
                if watch is not None:
                    watch.running.pop(delivery, None)  # watch.end(delivery)
        except RedeliveryRequested as request:
            await self._nack(delivery, request.delay)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Reaches here: a failure outside the handler (idempotency store, the
            # dead-letter publish, the broker) or a final failure with dead letters
            # off. Redeliver, backing off with the broker's delivery count so an
            # outage is not hammered.
            delay = self.redelivery_backoff.delay(delivery.attempt)
            log.exception(
                "message %s on %s/%s could not be handled or dead-lettered (%s: %s); "
                "asking the broker to redeliver it in %.1fs",
                envelope.id if envelope else delivery.message_id,
                delivery.topic, delivery.group, type(exc).__name__, exc, delay,
            )
            await self._nack(delivery, delay)
            return
        self.runs.finished(envelope.id)
        if delivery.settled is None:  # self._ack(delivery), one coroutine less
            try:
                await delivery.ack()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._ack_failed(delivery, exc)

    async def _recover(self, ctx: Context, failure: Exception) -> None:
        """The fused chain's failure path: what Retry and then DeadLetter do with an
        exception from the handler's first run (see ``_fused``)."""
        assert self._fused is not None
        retry, dead_letter = self._fused
        try:
            await retry.recover(ctx, self._invoke, failure)
        except Exception as exc:
            if dead_letter is None:
                raise
            await dead_letter.recover(ctx, self._after_retry, exc)

    async def _stop_fetching(self, task: asyncio.Task[None]) -> None:
        # A broker client may swallow a cancellation that lands in the middle of its
        # own work (aiokafka's getmany during a rebalance was seen doing so), which
        # would leave stop() waiting forever: cancel again, and as a last resort
        # close the subscription, which ends every adapter's iteration.
        for _ in range(4):
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return
        log.warning("%s/%s: fetching did not stop when cancelled; closing the subscription",
                    self.spec.topic, self.spec.group)
        await self._drop_subscription()
        await asyncio.gather(task, return_exceptions=True)

    async def stop(self, timeout: float) -> None:
        """Stop fetching, finish what was fetched within ``timeout``, then close."""
        self._stopping = True
        if self._stall_task is not None:
            self._stall_task.cancel()
            await asyncio.gather(self._stall_task, return_exceptions=True)
        if self._fetch_task is not None:
            if self._busy:
                # Inline: the fetch loop is running a handler; it returns once that
                # is done. Past the timeout, cancelling it cuts the handler short
                # and its message goes back to the broker, as a lane's would.
                _, pending = await asyncio.wait({self._fetch_task}, timeout=timeout)
                if pending:
                    log.warning("%s/%s: the handler is still busy after %.1fs; its "
                                "message goes back to the broker", self.spec.topic,
                                self.spec.group, timeout)
            await self._stop_fetching(self._fetch_task)
        self._batches.flush()  # what was collected is handled within the timeout too
        # Pooled work is handled within the timeout too: queued on the lanes (by
        # load, nothing else being left to wait for) ahead of their stop marks.
        while self._pool and self._lanes:
            index = min(range(len(self._lanes)), key=self._load.__getitem__)
            self._load[index] += 1
            self._lanes[index].put_nowait(self._pool.popleft())
        for queue in self._lanes:
            queue.put_nowait(None)
        if self._lane_tasks:
            _, pending = await asyncio.wait(self._lane_tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "%s/%s: %d worker(s) still busy after %.1fs; their messages go back "
                    "to the broker", self.spec.topic, self.spec.group, len(pending), timeout,
                )
                await asyncio.gather(*pending, return_exceptions=True)
        await self._drop_subscription()
        if self._watch is not None:
            await self._watch.stop()
        if self.state != "dead":
            self.state = "stopped"


def _fusable(layers: Sequence[Middleware]) -> tuple[Retry, DeadLetter | None] | None:
    """(retry, dead-letter) when ``layers`` is the default chain, else ``None``.

    Exact types only: a subclass may do something on the success path.
    """
    if len(layers) == 2 and type(layers[0]) is DeadLetter and type(layers[1]) is Retry:
        return layers[1], layers[0]
    if len(layers) == 1 and type(layers[0]) is Retry:
        return layers[0], None
    return None
