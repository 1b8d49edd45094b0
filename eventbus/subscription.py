"""One consumer of a (topic, group): fetch, dispatch by type to handlers, settle.

Deliveries are spread over ``concurrency`` lanes; messages sharing a partition
key always take the same lane, so per-key order holds while unrelated keys run
in parallel. The runner re-subscribes with backoff when the connection drops.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.context import Context
from eventbus.envelope import Envelope
from eventbus.errors import (
    BrokerConnectionError,
    DuplicateSubscriptionError,
    EventBusError,
    SchemaError,
)
from eventbus.events import Message
from eventbus.middleware.base import Middleware, Next, RedeliveryRequested, compose
from eventbus.middleware.deadletter import dead_letter_undecodable
from eventbus.middleware.retry import RetryPolicy

if TYPE_CHECKING:
    from eventbus.bus import EventBus

DeliveryMode = Literal["at_most_once", "at_least_once"]
HandlerFn = Callable[..., Awaitable[None]]
log = logging.getLogger("eventbus.subscription")


@dataclass
class Handler:
    """A user function and how to call it."""

    fn: HandlerFn
    message_class: type[Message] | None
    wants_context: bool
    wants_envelope: bool

    @classmethod
    def wrap(cls, fn: HandlerFn, message_class: type[Message] | None) -> Handler:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"handler {fn.__qualname__} must be an async function")
        params = list(inspect.signature(fn).parameters.values())
        if not 1 <= len(params) <= 2:
            raise TypeError(
                f"handler {fn.__qualname__} must take (event) or (event, ctx), "
                f"not {len(params)} parameters"
            )
        annotation = params[0].annotation
        wants_envelope = annotation is Envelope or annotation == "Envelope"
        return cls(fn, message_class, len(params) == 2, wants_envelope)


@dataclass
class SubscriptionSpec:
    """Everything ``bus.subscribe`` was told about one (topic, group)."""

    topic: str
    group: str
    concurrency: int = 1
    ordered: bool = True
    mode: DeliveryMode = "at_least_once"
    start_from: Literal["earliest", "latest"] = "latest"
    retry: RetryPolicy | None = None
    timeout: float | None = None
    middleware: list[Middleware] = field(default_factory=list)
    handlers: dict[str, Handler] = field(default_factory=dict)
    catch_all: Handler | None = None

    def add(self, handler: Handler) -> None:
        if handler.message_class is None:
            if self.catch_all is not None:
                raise DuplicateSubscriptionError(
                    f"topic {self.topic!r} group {self.group!r} already has a handler for "
                    f"all types ({self.catch_all.fn.__qualname__})"
                )
            self.catch_all = handler
            return
        name = handler.message_class.event_type()
        if name in self.handlers:
            raise DuplicateSubscriptionError(
                f"{name!r} on topic {self.topic!r} already has a handler in group "
                f"{self.group!r} ({self.handlers[name].fn.__qualname__}); one handler per "
                "type and group — use another group to fan out"
            )
        self.handlers[name] = handler


class Runner:
    """Runs one :class:`SubscriptionSpec` against the bus's adapter."""

    def __init__(self, bus: EventBus, spec: SubscriptionSpec) -> None:
        self.bus = bus
        self.spec = spec
        self.chain: Next = compose(bus.chain_for(spec), self._invoke)
        self._lanes: list[asyncio.Queue[Delivery | None]] = []
        # Deliveries routed to each lane and not yet finished (queued + running): a
        # lane's queue is empty while its worker is busy, so qsize alone would send
        # unkeyed messages behind a slow handler while another worker sits idle.
        self._load: list[int] = []
        self._lane_tasks: list[asyncio.Task[None]] = []
        self._fetch_task: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None
        self._next_lane = 0

    async def start(self) -> None:
        """Subscribe (failing fast if the broker refuses) and start fetching."""
        self._subscription = await self._subscribe()
        for index in range(max(1, self.spec.concurrency)):
            queue: asyncio.Queue[Delivery | None] = asyncio.Queue()
            self._lanes.append(queue)
            self._load.append(0)
            self._lane_tasks.append(asyncio.create_task(self._lane(index, queue)))
        self._fetch_task = asyncio.create_task(self._fetch())

    async def _subscribe(self) -> Subscription:
        options = SubscribeOptions(
            group=self.spec.group,
            prefetch=max(1, self.spec.concurrency) * self.bus.prefetch_per_worker,
            start_from=self.spec.start_from,
        )
        return await self.bus.adapter.subscribe(self.spec.topic, options)

    async def _fetch(self) -> None:
        backoff = 0.05
        while True:
            try:
                if self._subscription is None:
                    self._subscription = await self._subscribe()
                async for delivery in self._subscription:
                    backoff = 0.05
                    self._route(delivery)
                return
            except BrokerConnectionError as exc:
                log.warning(
                    "subscription %s/%s lost its connection (%s); re-subscribing in %.2fs",
                    self.spec.topic, self.spec.group, exc, backoff,
                )
                subscription, self._subscription = self._subscription, None
                if subscription is not None:
                    await subscription.close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _route(self, delivery: Delivery) -> None:
        lanes = self._lanes
        key = delivery.envelope.partitionkey if delivery.envelope is not None else None
        if len(lanes) == 1:
            index = 0
        elif key is not None and self.spec.ordered:
            index = zlib.crc32(key.encode()) % len(lanes)
        else:
            index = min(range(len(lanes)), key=self._load.__getitem__)
        self._load[index] += 1
        lanes[index].put_nowait(delivery)

    async def _lane(self, index: int, queue: asyncio.Queue[Delivery | None]) -> None:
        while True:
            delivery = await queue.get()
            if delivery is None:
                return
            try:
                await self.handle(delivery)
            finally:
                self._load[index] -= 1

    async def handle(self, delivery: Delivery) -> None:
        """Run one delivery through the chain and settle it."""
        envelope = delivery.envelope
        try:
            if envelope is None:
                await dead_letter_undecodable(self.bus.adapter, delivery)
                log.error(
                    "undecodable message on %s/%s dead-lettered: %s",
                    delivery.topic, delivery.group, delivery.decode_error,
                )
                await delivery.ack()
                return
            if self.spec.mode == "at_most_once":
                await delivery.ack()
            ctx = Context(self.bus, delivery, envelope)
            await self.chain(ctx)
            if delivery.settled is None:
                await delivery.ack()
        except RedeliveryRequested as request:
            await self._nack(delivery, request.delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception(
                "message %s on %s/%s could not be handled or dead-lettered (%s); "
                "asking the broker to redeliver",
                envelope.id if envelope else delivery.message_id,
                delivery.topic, delivery.group, exc,
            )
            await self._nack(delivery, 1.0)

    async def _nack(self, delivery: Delivery, delay: float) -> None:
        if delivery.settled is not None:
            return  # at-most-once: already acked, the failure is final by design
        try:
            await delivery.nack(delay)
        except EventBusError as exc:
            log.warning("nack failed for %s: %s", delivery.message_id, exc)

    async def _invoke(self, ctx: Context) -> None:
        """The innermost step: pick the handler by type, decode, call."""
        envelope = ctx.envelope
        handler = self.spec.handlers.get(envelope.type) or self.spec.catch_all
        if handler is None:
            if self.bus.registry.get(envelope.type) is None:
                raise SchemaError(
                    f"unknown event type {envelope.type!r} (event {envelope.id}) on topic "
                    f"{ctx.topic!r}: no class is registered and group {ctx.group!r} has no "
                    "handler for it"
                )
            log.debug("no handler in %s for %s; acked", ctx.group, envelope.type)
            return
        arg: Any
        if handler.wants_envelope:
            arg = envelope
        else:
            event = self.bus.registry.decode(envelope, handler.message_class)
            ctx.event = event
            arg = event
        if handler.wants_context:
            await handler.fn(arg, ctx)
        else:
            await handler.fn(arg)

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
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.close()
        await asyncio.gather(task, return_exceptions=True)

    async def stop(self, timeout: float) -> None:
        """Stop fetching, finish what was fetched within ``timeout``, then close."""
        if self._fetch_task is not None:
            await self._stop_fetching(self._fetch_task)
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
        if self._subscription is not None:
            await self._subscription.close()
            self._subscription = None
