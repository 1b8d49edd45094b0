"""The EventBus: publish typed events, subscribe handlers, run them with middleware."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar

from eventbus.adapter import Adapter
from eventbus.context import current_envelope
from eventbus.envelope import Envelope, new_id, utcnow, validate_extension_name
from eventbus.errors import (
    BatchPublishError,
    BrokerConnectionError,
    ConfigurationError,
    DuplicateSubscriptionError,
    PublishError,
)
from eventbus.events import Command, Message, Registry, registry
from eventbus.middleware.base import Middleware
from eventbus.middleware.correlation import correlation
from eventbus.middleware.deadletter import DeadLetter
from eventbus.middleware.idempotency import Idempotency, IdempotencyStore
from eventbus.middleware.retry import NO_RETRY, Retry, RetryPolicy
from eventbus.middleware.timeout import Timeout
from eventbus.registry_adapters import adapter_from_url
from eventbus.subscription import DeliveryMode, Handler, HandlerFn, Runner, SubscriptionSpec

log = logging.getLogger("eventbus")
F = TypeVar("F", bound=HandlerFn)


class EventBus:
    """Publish and subscribe typed events over any broker, chosen by URL.

    ::

        bus = EventBus.from_env(source="order-service")

        @bus.subscribe(OrderPlaced, group="billing")
        async def charge(event: OrderPlaced, ctx: Context) -> None:
            await ctx.publish(PaymentCharged(order_id=event.order_id))

        async with bus:
            await bus.publish(OrderPlaced(order_id="1"))
    """

    def __init__(
        self,
        adapter: Adapter | str = "memory://",
        *,
        source: str = "eventbus",
        middleware: Sequence[Middleware] = (),
        retry: RetryPolicy | None = None,
        idempotency: IdempotencyStore | None = None,
        dead_letter: bool = True,
        shutdown_timeout: float = 10.0,
        publish_timeout: float = 30.0,
        prefetch_per_worker: int = 8,
        registry: Registry = registry,
    ) -> None:
        self.adapter = adapter_from_url(adapter) if isinstance(adapter, str) else adapter
        self.source = source
        self.middleware = list(middleware)
        self.retry = retry or RetryPolicy()
        self.idempotency = idempotency
        self.dead_letter = dead_letter
        self.shutdown_timeout = shutdown_timeout
        self.publish_timeout = publish_timeout
        self.prefetch_per_worker = prefetch_per_worker
        self.registry = registry
        self._specs: dict[tuple[str, str], SubscriptionSpec] = {}
        self._command_groups: dict[str, str] = {}
        self._runners: list[Runner] = []
        self._started = False
        self._stopped = asyncio.Event()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> EventBus:
        """A bus on the broker at ``url`` (``kafka://``, ``amqp://``, ``memory://`` ...)."""
        return cls(adapter_from_url(url), **options)

    @classmethod
    def from_env(cls, **options: Any) -> EventBus:
        """A bus on ``$EVENTBUS_URL``, or the in-memory broker when it is unset."""
        return cls.from_url(os.environ.get("EVENTBUS_URL") or "memory://", **options)

    # -- subscribing -----------------------------------------------------------------

    def subscribe(
        self,
        *targets: type[Message] | str,
        group: str | None = None,
        concurrency: int = 1,
        ordered: bool = True,
        delivery: DeliveryMode = "at_least_once",
        start_from: Literal["earliest", "latest"] = "latest",
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        middleware: Sequence[Middleware] = (),
    ) -> Callable[[F], F]:
        """Decorator: call the function for each message of the given classes or topics.

        - ``group``: consumers sharing a group compete; each group gets every event.
          Defaults to the bus ``source`` for events and to the command's topic for
          commands, so a command always has exactly one handler group.
        - ``concurrency``: handlers running at once; same-key messages stay in order
          when ``ordered``.
        - ``delivery``: ``"at_least_once"`` (ack after success, retries, dead letters)
          or ``"at_most_once"`` (ack on receipt; no broker redelivery).
        """
        if not targets:
            raise ConfigurationError("subscribe() needs at least one event class or topic")
        if delivery not in ("at_least_once", "at_most_once"):
            raise ConfigurationError(
                f"delivery must be 'at_least_once' or 'at_most_once', not {delivery!r}"
            )

        def decorate(fn: F) -> F:
            for target in targets:
                cls = target if isinstance(target, type) else None
                topic = cls.default_topic() if cls is not None else str(target)
                is_command = cls is not None and issubclass(cls, Command)
                chosen = group or (topic if is_command else self.source)
                if cls is not None and is_command:
                    owner = self._command_groups.setdefault(cls.event_type(), chosen)
                    if owner != chosen:
                        raise DuplicateSubscriptionError(
                            f"command {cls.event_type()!r} already has handler group "
                            f"{owner!r}; a command goes to exactly one group"
                        )
                spec = self._specs.get((topic, chosen))
                if spec is None:
                    spec = self._specs[(topic, chosen)] = SubscriptionSpec(
                        topic=topic,
                        group=chosen,
                        concurrency=concurrency,
                        ordered=ordered,
                        mode=delivery,
                        start_from=start_from,
                        retry=retry,
                        timeout=timeout,
                        middleware=list(middleware),
                    )
                spec.add(Handler.wrap(fn, cls))
            return fn

        return decorate

    def chain_for(self, spec: SubscriptionSpec) -> list[Middleware]:
        """The middleware around ``spec``'s handlers, outermost first (see middleware.base)."""
        chain: list[Middleware] = [correlation, *self.middleware, *spec.middleware]
        if self.dead_letter:
            chain.append(DeadLetter(self.adapter))
        if self.idempotency is not None:
            chain.append(Idempotency(self.idempotency))
        policy = spec.retry or self.retry
        at_most_once = spec.mode == "at_most_once"
        redelivery = self.adapter.capabilities.redelivery and not at_most_once
        if at_most_once:
            policy = NO_RETRY if spec.retry is None else policy
        chain.append(Retry(policy, broker_redelivery=redelivery))
        if spec.timeout is not None:
            chain.append(Timeout(spec.timeout))
        return chain

    # -- publishing ------------------------------------------------------------------

    def envelope_for(
        self,
        message: Message,
        *,
        key: str | None = None,
        parent: Envelope | None = None,
        correlation_id: str | None = None,
        subject: str | None = None,
        extensions: dict[str, str] | None = None,
    ) -> Envelope:
        """The envelope ``publish`` would send for ``message``."""
        parent = parent if parent is not None else current_envelope.get()
        event_id = new_id()
        if extensions:
            for name in extensions:
                validate_extension_name(name)
        if parent is not None:
            correlation = correlation_id or parent.correlationid or parent.id
            causation: str | None = parent.id
            traceparent, tracestate = parent.traceparent, parent.tracestate
        else:
            correlation, causation = correlation_id or event_id, None
            traceparent = tracestate = None
        return Envelope(
            id=event_id,
            type=message.event_type(),
            source=self.source,
            time=utcnow(),
            data=message.to_bytes(),
            dataversion=message.data_version(),
            partitionkey=key,
            subject=subject,
            correlationid=correlation,
            causationid=causation,
            traceparent=traceparent,
            tracestate=tracestate,
            extensions=dict(extensions) if extensions else {},
        )

    async def publish(
        self, message: Message, *, topic: str | None = None, **options: Any
    ) -> Envelope:
        """Publish ``message``; returns its envelope once the broker has confirmed it.

        Options: ``key`` (partition key: same key, same order), ``parent`` (the
        envelope that caused it; defaults to the one being handled),
        ``correlation_id``, ``subject``, ``extensions``.
        """
        envelope = self.envelope_for(message, **options)
        await self.publish_envelopes(topic or message.default_topic(), [envelope])
        return envelope

    async def send(self, command: Command, **options: Any) -> Envelope:
        """Send a command to the one group that handles it."""
        if not isinstance(command, Command):
            raise ConfigurationError(
                f"send() takes a Command; {type(command).__name__} is an event — publish it"
            )
        return await self.publish(command, **options)

    async def publish_many(
        self, messages: Sequence[Message], *, topic: str | None = None, **options: Any
    ) -> list[Envelope]:
        """Publish a batch (one broker round trip per topic).

        On partial failure raises :class:`BatchPublishError` whose ``failures`` are
        indexes into ``messages``.
        """
        envelopes = [self.envelope_for(m, **options) for m in messages]
        by_topic: dict[str, list[int]] = defaultdict(list)
        for index, message in enumerate(messages):
            by_topic[topic or message.default_topic()].append(index)
        failures: dict[int, Exception] = {}
        for name, indexes in by_topic.items():
            try:
                await self.publish_envelopes(name, [envelopes[i] for i in indexes])
            except BatchPublishError as exc:
                failures.update({indexes[i]: err for i, err in exc.failures.items()})
            except PublishError as exc:
                failures.update({i: exc for i in indexes})
        if failures:
            raise BatchPublishError(
                f"{len(failures)} of {len(messages)} messages were not published; "
                "see .failures for each index and its error",
                failures,
                len(messages),
            )
        return envelopes

    async def publish_envelopes(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        """Publish ready envelopes, retrying while the connection is down (bounded)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_timeout
        delay = 0.05
        while True:
            try:
                await self.adapter.publish(topic, envelopes)
                return
            except BrokerConnectionError:
                if loop.time() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and start every subscription."""
        if self._started:
            return
        await self.adapter.connect()
        self._started = True
        self._stopped = asyncio.Event()
        try:
            for spec in self._specs.values():
                runner = Runner(self, spec)
                await runner.start()
                self._runners.append(runner)
        except BaseException:
            await self.stop()
            raise

    async def stop(self, timeout: float | None = None) -> None:
        """Stop fetching, let in-flight handlers finish (up to ``timeout``), close."""
        if not self._started:
            return
        self._started = False
        timeout = self.shutdown_timeout if timeout is None else timeout
        await asyncio.gather(*(r.stop(timeout) for r in self._runners))
        self._runners.clear()
        await self.adapter.close()
        self._stopped.set()

    async def run(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            log.info("eventbus running on %s with %d subscription(s)",
                     type(self.adapter).__name__, len(self._specs))
            await stop.wait()
            log.info("signal received; shutting down")
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()

    async def __aenter__(self) -> EventBus:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def subscriptions(self) -> list[SubscriptionSpec]:
        """What has been subscribed, one entry per (topic, group)."""
        return list(self._specs.values())
