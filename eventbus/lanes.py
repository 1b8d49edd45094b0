"""How a runner's fetched deliveries get to its handler: the lanes part of
:class:`~eventbus.runner.Runner`.

Three ways, fixed per subscription:

- *inline* (one lane, no batches): the fetch loop runs each delivery itself before
  taking the next (no queue, no task switch);
- *lanes* (``concurrency`` > 1): deliveries sharing a partition key always take the
  same lane (per-key order), the others go to the first idle lane or wait in a pool
  for the first lane to finish;
- *batches* (``batch=N``): deliveries are collected into batches, then queued to
  lanes as above (split by key lane when ordered).

Work queued in lanes carries the generation of the subscription that handed it out
(:class:`Progress`); once that subscription is lost the broker has taken its work
back, so a lane drops it instead of running it a second time. A delivery marked
``stale`` (its Kafka partition revoked meanwhile) is dropped the same way.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import KW_ONLY, dataclass

from eventbus.adapter import Delivery, Subscription
from eventbus.batching import BatchCollector
from eventbus.invocation import cancelling
from eventbus.runs import RunCounter
from eventbus.spec import SubscriptionSpec

log = logging.getLogger("eventbus.runner")

Work = Delivery | list[Delivery]
Lane = asyncio.Queue[tuple[int, Work] | None]


@dataclass(slots=True)
class Progress:
    """What the parts of one runner tell each other, in one declared place.

    ``ticks`` counts deliveries received and finished (the stall watch compares it
    between its looks: no clock read per message); ``generation`` numbers the
    subscriptions the runner had (bumped when one is lost: work it handed out is
    dropped); ``progressed``: a delivery of this generation reached the handler;
    ``stopping``: ``stop()`` was called.
    """

    ticks: int = 0
    generation: int = 0
    progressed: bool = False
    stopping: bool = False

    def new_generation(self) -> None:
        """The subscription was lost: what it handed out is the broker's again."""
        self.generation += 1
        self.progressed = False


@dataclass(eq=False, repr=False)
class Lanes:
    """Routes one subscription's deliveries to ``handle`` (or, batched, ``run_batch``).

    ``nack`` gives a delivery back when a ``CancelledError`` escaped the chain
    without its lane being cancelled; ``runs`` learns of every delivery dropped
    unhandled (it was seen, it did not run). ``decode`` reads a delivery that is not a
    CloudEvent with the subscription's wire format before it is routed or batched, so
    its key and type count there (``None``: none, the runner reads it when it runs).
    """

    spec: SubscriptionSpec
    progress: Progress
    runs: RunCounter
    _: KW_ONLY
    handle: Callable[[Delivery], Awaitable[None]]
    nack: Callable[[Delivery, float], Awaitable[None]]
    run_batch: Callable[[list[Delivery]], Awaitable[None]] | None = None
    decode: Callable[[Delivery], object] | None = None

    def __post_init__(self) -> None:
        spec = self.spec
        # One lane without key routing to do: the fetch loop runs each delivery
        # itself (no queue, no task switch), finishing it before taking the next.
        self.inline = max(1, spec.concurrency) == 1 and spec.batch is None
        self.busy = False  # inline: the fetch loop is running a handler
        # Deliveries received and not yet finished (waiting in a lane or the pool,
        # collected into a batch, or running): what of the prefetch is in use.
        self.held = 0
        # batch=N: deliveries wait here until the batch is full or its time is up.
        self._batches = BatchCollector(spec, self._queue_batch)
        self._lanes: list[Lane] = []
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
        self._pool: deque[tuple[int, Work]] = deque()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the lane workers (none when inline)."""
        for index in range(0 if self.inline else max(1, self.spec.concurrency)):
            queue: Lane = asyncio.Queue()
            self._lanes.append(queue)
            self._load.append(0)
            self._tasks.append(asyncio.create_task(self._lane(index, queue)))

    def idle(self) -> bool:
        """Nothing fetched is waiting or running."""
        return not (self.busy or self._pool or self._batches.pending or any(self._load))

    def forget_collected(self) -> None:
        """The subscription was lost: a batch still being collected is the broker's again."""
        for lost in self._batches.discard():
            self.held -= 1
            self.runs.seen(lost)

    async def consume(self, subscription: Subscription) -> None:
        """Take ``subscription``'s deliveries until it ends (or, inline, stop() is called)."""
        progress = self.progress
        if self.inline:
            # Each delivery is handled here, as a lane would (no queue, no task
            # switch, no coroutine besides handle()), before taking the next.
            async for delivery in subscription:
                if delivery.stale:
                    # Taken back by the broker before it was fetched from the
                    # adapter (a Kafka partition revoked): its new owner has it.
                    self.runs.seen(delivery)
                    log.debug(
                        "dropped stale %s of %s/%s",
                        delivery.message_id,
                        delivery.topic,
                        delivery.group,
                    )
                    continue
                self.busy = progress.progressed = True
                progress.ticks += 1
                self.held += 1
                try:
                    await self.handle(delivery)
                except asyncio.CancelledError:
                    if cancelling():
                        raise
                    log.error(
                        "message %s on %s/%s: CancelledError escaped the "
                        "middleware; asking the broker to redeliver",
                        delivery.message_id,
                        delivery.topic,
                        delivery.group,
                    )
                    await self.nack(delivery, 1.0)
                finally:
                    self.busy = False
                    self.held -= 1
                if progress.stopping:
                    return
        elif self.spec.batch is not None:
            decode = self.decode
            async for delivery in subscription:
                progress.ticks += 1
                self.held += 1
                if delivery.envelope is None and decode is not None:
                    decode(delivery)
                self._batches.add(delivery)
        else:
            async for delivery in subscription:
                self.route(delivery)

    def route(self, delivery: Delivery) -> None:
        """Queue ``delivery`` on its key's lane, else on an idle one (or the pool)."""
        self.progress.ticks += 1
        self.held += 1
        lanes = self._lanes
        if delivery.envelope is None and self.decode is not None:
            self.decode(delivery)
        key = delivery.envelope.partitionkey if delivery.envelope is not None else None
        if len(lanes) == 1:
            index = 0
        elif key is not None and self.spec.ordered:
            index = zlib.crc32(key.encode()) % len(lanes)
        else:
            self._to_any_lane((self.progress.generation, delivery))
            return
        self._load[index] += 1
        lanes[index].put_nowait((self.progress.generation, delivery))

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
        generation = self.progress.generation
        for index, part in parts.items():
            if index < 0:
                self._to_any_lane((generation, part))
                continue
            self._load[index] += 1
            lanes[index].put_nowait((generation, part))

    def _to_any_lane(self, item: tuple[int, Work]) -> None:
        """Hand ``item`` to an idle lane, or pool it for the first lane to finish."""
        for index, load in enumerate(self._load):
            if load == 0:
                self._load[index] = 1
                self._lanes[index].put_nowait(item)
                return
        self._pool.append(item)

    def _lane_done(self, index: int) -> None:
        """One item of lane ``index`` is finished (settled); an idle lane takes pooled work."""
        self.progress.ticks += 1
        self._load[index] -= 1
        if self._load[index] == 0 and self._pool:
            self._load[index] = 1
            self._lanes[index].put_nowait(self._pool.popleft())

    async def _lane(self, index: int, queue: Lane) -> None:
        while True:
            item = await queue.get()
            if item is None:
                return
            generation, work = item
            if self.progress.stopping:
                # Queued before stop() and not started: nothing new starts once the
                # runner stops (see stop()).
                self._drop_unstarted(work)
                self._lane_done(index)
                continue
            if isinstance(work, list):
                await self._lane_batch(index, generation, work)
                continue
            delivery = work
            try:
                if generation != self.progress.generation or delivery.stale:
                    # Handed out by a subscription since lost, or stale (its Kafka
                    # partition was revoked meanwhile): the broker already took it
                    # back and will deliver it again.
                    self.runs.seen(delivery)
                    log.debug(
                        "dropped %s from a lost subscription of %s/%s",
                        delivery.message_id,
                        delivery.topic,
                        delivery.group,
                    )
                    continue
                self.progress.progressed = True
                await self.handle(delivery)
            except asyncio.CancelledError:
                if cancelling():
                    raise
                # Something in the chain outside the handler let a CancelledError
                # out without this lane being cancelled: keep the lane alive.
                log.error(
                    "message %s on %s/%s: CancelledError escaped the middleware; "
                    "asking the broker to redeliver",
                    delivery.message_id,
                    delivery.topic,
                    delivery.group,
                )
                await self.nack(delivery, 1.0)
            finally:
                self.held -= 1
                self._lane_done(index)

    async def _lane_batch(self, index: int, generation: int, batch: list[Delivery]) -> None:
        try:
            if generation != self.progress.generation:
                for delivery in batch:
                    self.runs.seen(delivery)  # lost with its subscription, as above
                return
            live = [delivery for delivery in batch if not delivery.stale]
            for delivery in batch:
                if delivery.stale:
                    self.runs.seen(delivery)  # taken back by a rebalance, as above
            if not live:
                return
            self.progress.progressed = True
            assert self.run_batch is not None  # batches are only collected with it
            await self.run_batch(live)
        except asyncio.CancelledError:
            if cancelling():
                raise
            log.error(
                "a batch on %s/%s: CancelledError escaped; asking the broker to redeliver it",
                self.spec.topic,
                self.spec.group,
            )
            for delivery in batch:
                await self.nack(delivery, 1.0)
        finally:
            self.held -= len(batch)
            self._lane_done(index)

    async def stop(self, timeout: float) -> None:
        """Let the handlers already running finish within ``timeout``, start nothing
        more, then stop the lane workers (what is still running past it is cancelled:
        its messages go back to the broker).

        Work fetched but not started (queued on a lane, pooled, a batch being
        collected) is dropped unstarted, as a lost subscription's is: the adapter's
        close hands every unsettled delivery back to the broker, so the next consumer
        gets it. Starting it here would run handlers after the stop signal, and a
        burst's tail would be cut off by the timeout anyway.
        """
        self.forget_collected()
        while self._pool:
            self._drop_unstarted(self._pool.popleft()[1])
        for queue in self._lanes:
            queue.put_nowait(None)
        if not self._tasks:
            return
        _, pending = await asyncio.wait(self._tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning(
                "%s/%s: %d worker(s) still busy after %.1fs; their messages go back to the broker",
                self.spec.topic,
                self.spec.group,
                len(pending),
                timeout,
            )
            await asyncio.gather(*pending, return_exceptions=True)

    def _drop_unstarted(self, work: Work) -> None:
        """Stopping: ``work`` was fetched and never started; the broker has it again."""
        for delivery in work if isinstance(work, list) else [work]:
            self.runs.seen(delivery)
