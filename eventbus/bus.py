"""The EventBus: publish typed events, subscribe handlers, run them with middleware."""

# Over 400 lines because EventBus is the one object a user holds: each public method is
# a short delegation (to spec, publishing, runner, requests) under the docstring that is
# the user's reference for it.

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import os
import signal
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar, Unpack, overload

from eventbus.adapter import Adapter, HealthReport
from eventbus.backoff import Backoff
from eventbus.batching import check_batch
from eventbus.context import INHERIT, ParentOption
from eventbus.envelope import Envelope
from eventbus.errors import (
    BrokerConnectionError,
    ConfigurationError,
    DuplicateSubscriptionError,
    SubscriptionFailedError,
    mask_url,
)
from eventbus.events import Command, Message, Registry, registry
from eventbus.middleware.base import (
    Middleware,
    PassingPublishLayer,
    PublishMiddleware,
    PublishObserver,
    compose_publish,
)
from eventbus.middleware.chain import ChainDefaults, build_chain, check_middleware
from eventbus.middleware.idempotency import Idempotency, IdempotencyStore
from eventbus.middleware.retry import RetryPolicy
from eventbus.payloads import PayloadFormat, check_format
from eventbus.publishing import (
    TraceRoot,
    build_envelope,
    build_envelopes,
    not_a_message,
    publish_batch,
    publish_with_retry,
)
from eventbus.registry_adapters import adapter_from_url
from eventbus.requests import Requester, reply_step
from eventbus.runner import Runner, SubscriptionHealth
from eventbus.spec import DeliveryMode, Handler, SubscriptionSpec, check_targets, resolve_delivery
from eventbus.wire import WireFormatOption, resolve_wire_format

if TYPE_CHECKING:
    from eventbus.context import PublishOptions

R = TypeVar("R")

log = logging.getLogger("eventbus")
F = TypeVar("F", bound=Callable[..., Any])  # async def, or a plain def (sync_handlers)


@dataclass(slots=True)
class BusHealth:
    """Result of :meth:`EventBus.health`: ``ok`` when the bus is started, the adapter
    is healthy and every subscription is running."""

    ok: bool
    adapter: HealthReport
    subscriptions: list[SubscriptionHealth] = field(default_factory=list)
    detail: str = ""


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

    # Asked for a new trace's context before a publish builds its envelopes (set on a
    # bus by eventbus.tracing.Tracing.instrument; see eventbus.publishing.TraceRoot).
    # A class attribute until then: as one more instance attribute set in __init__ it
    # made every publish of an uninstrumented bus slower (more dict lookups in the
    # attribute reads, ~500 instructions per publish on the memory broker).
    trace_root: TraceRoot | None = None

    def __init__(
        self,
        adapter: Adapter | str = "memory://",
        *,
        source: str = "eventbus",
        middleware: Sequence[Middleware] = (),
        publish_middleware: Sequence[PublishMiddleware] = (),
        retry: RetryPolicy | None = None,
        idempotency: IdempotencyStore | Idempotency | None = None,
        dead_letter: bool = True,
        shutdown_timeout: float = 10.0,
        publish_timeout: float = 30.0,
        prefetch_per_worker: int = 8,
        registry: Registry = registry,
        warn_after: float | None = 30.0,
        stall_after: float | None = 60.0,
        redelivery_backoff: Backoff | None = None,
        start_timeout: float = 30.0,
        wire_format: WireFormatOption = "cloudevents",
        payload_format: str | PayloadFormat | None = None,
    ) -> None:
        self.adapter = adapter_from_url(adapter) if isinstance(adapter, str) else adapter
        # How events of a class that names no payload_format are encoded (None: JSON).
        self.payload_format = check_format(payload_format, "EventBus(...)", per_class=False)
        self.source = source
        check_middleware(middleware, "EventBus(...)")
        self.middleware = list(middleware)
        self.publish_middleware = list(publish_middleware)
        self.retry = retry or RetryPolicy()
        self.idempotency = idempotency
        self.dead_letter = dead_letter
        self.shutdown_timeout = shutdown_timeout
        self.publish_timeout = publish_timeout
        self.prefetch_per_worker = prefetch_per_worker
        self.registry = registry
        if warn_after is not None and not warn_after > 0:
            raise ConfigurationError(
                f"warn_after must be a positive number of seconds or None, not {warn_after!r}"
            )
        self.warn_after = warn_after
        for name, value in (("stall_after", stall_after), ("start_timeout", start_timeout)):
            if value is not None and not value > 0:
                raise ConfigurationError(
                    f"{name} must be a positive number of seconds, not {value!r}"
                )
        self.stall_after = stall_after
        self.redelivery_backoff = redelivery_backoff
        self.start_timeout = start_timeout
        # How subscriptions read, and publishes write, unless they say otherwise.
        self.wire_format = resolve_wire_format(wire_format, "EventBus(...)")
        self._specs: dict[tuple[str, str], SubscriptionSpec] = {}
        self._command_groups: dict[str, str] = {}
        self._runners: list[Runner] = []
        self._dead: list[Runner] = []
        self._failed = asyncio.Event()
        self._started = False
        self._stopped = asyncio.Event()
        self._requester: Requester | None = None
        self._on_start: list[Callable[[], Awaitable[None]]] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self._closer: AsyncGenerator[None, None] | None = None
        self._published: list[type[Message]] = []

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
        delivery: DeliveryMode | None = None,
        start_from: Literal["earliest", "latest"] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        middleware: Sequence[Middleware] = (),
        idempotency: IdempotencyStore | Idempotency | None = None,
        batch: int | None = None,
        batch_timeout: float | None = None,
        wire_format: WireFormatOption | None = None,
    ) -> Callable[[F], F]:
        """Decorator: call the function for each message of the given classes or topics.

        - ``group``: consumers sharing a group compete; each group gets every event.
          Defaults to the bus ``source`` for events and to the command's topic for
          commands, so a command always has exactly one handler group.
        - ``concurrency``: handlers running at once; same-key messages stay in order
          when ``ordered``.
        - ``delivery``: ``None`` (default) takes the broker's strongest guarantee:
          at-least-once where it redelivers, at-most-once elsewhere (core NATS, Redis
          Pub/Sub: the handler is still retried in process and dead-lettered, but a
          crash loses what was in flight); the subscription's ``guarantee`` says
          which. ``"at_least_once"`` insists (ack after success, retries, dead
          letters, broker redelivery) and raises
          :class:`~eventbus.errors.GuaranteeUnavailableError` here, before anything
          is consumed, on a broker that cannot give it. ``"at_most_once"`` acks on
          receipt: no broker redelivery, no retries unless ``retry`` is given.
        - ``start_from``: where the group starts the first time it subscribes,
          ``"earliest"`` (every retained message) or ``"latest"`` (what is published
          from then on). ``None`` (default) takes the URL's ``start_from`` option, else
          ``"latest"``; an explicit value wins over the URL's. Without
          ``capabilities.replay`` a group starts with what is published once it exists
          (its adapter page says how; SQS refuses ``"earliest"`` when it starts).
        - ``idempotency``: a store (or a configured ``Idempotency(store, lease=...)``)
          deduplicating this subscription's messages by event id instead of the
          bus's; it runs inside the dead-letter step. The bus closes the store on
          ``stop()``.
        - ``batch``: the handler takes ``list[Event]`` (and, with a second parameter,
          ``list[Context]``): up to ``batch`` events at a time, or what arrived within
          ``batch_timeout`` seconds (default 0.05) of the first, acked together. A
          handler raising ``BatchItemFailed(indexes)`` has only those retried and
          dead-lettered, one by one; any other exception has every event of the
          batch retried on its own (see :mod:`eventbus.batching`). Needs one event
          class, at-least-once delivery, and no idempotency.
        - ``wire_format``: how to read a message that is not a CloudEvent (default: the
          bus's): ``"cloudevents"`` dead-letters it, ``"plain"`` reads its body as the
          event's data, ``"faststream"`` also FastStream's Redis frames, or your own
          :class:`~eventbus.wire.WireFormat`. CloudEvents are read whatever it says.

        Subscribe before ``start()``. Several handlers may share a (topic, group)
        when they give it the same options; different ones raise ConfigurationError.
        """
        check_targets(targets)
        self._refuse_when_started(targets)
        check_middleware(middleware, "subscribe(...)")
        if delivery not in (None, "at_least_once", "at_most_once"):
            raise ConfigurationError(
                f"delivery must be 'at_least_once', 'at_most_once' or None (the broker's "
                f"strongest), not {delivery!r}"
            )
        mode: DeliveryMode = delivery or "at_least_once"
        check_batch(targets, batch, batch_timeout, mode, idempotency)
        wire = (
            self.wire_format
            if wire_format is None
            else resolve_wire_format(wire_format, "subscribe(...)")
        )

        def decorate(fn: F) -> F:
            self._refuse_when_started(targets)
            for target in targets:
                cls = target if isinstance(target, type) else None
                handler = Handler.wrap(fn, cls, batch is not None)  # a bad one registers nothing
                topic = cls.default_topic() if cls is not None else str(target)
                is_command = cls is not None and issubclass(cls, Command)
                chosen = group or (topic if is_command else self.source)
                # An explicit guarantee the broker lacks fails here, before start.
                guarantee = resolve_delivery(delivery, self.adapter, topic, chosen)
                if cls is not None and is_command:
                    owner = self._command_groups.setdefault(cls.event_type(), chosen)
                    if owner != chosen:
                        raise DuplicateSubscriptionError(
                            f"command {cls.event_type()!r} already has handler group "
                            f"{owner!r}; a command goes to exactly one group"
                        )
                wanted = SubscriptionSpec(
                    topic=topic,
                    group=chosen,
                    concurrency=concurrency,
                    ordered=ordered,
                    mode=mode,
                    delivery=delivery,
                    guarantee=guarantee,
                    start_from=start_from,
                    retry=retry,
                    timeout=timeout,
                    middleware=list(middleware),
                    idempotency=idempotency,
                    batch=batch,
                    batch_timeout=batch_timeout if batch is not None else None,
                    wire=wire,
                )
                spec = self._specs.get((topic, chosen))
                if spec is None:
                    spec = self._specs[(topic, chosen)] = wanted
                spec.check_same_options(wanted, fn)
                spec.add(handler)
            return fn

        return decorate

    def _refuse_when_started(self, targets: Sequence[type[Message] | str]) -> None:
        if self._started:
            raise ConfigurationError(
                f"subscribe({', '.join(map(_name, targets))}) after start(): the "
                "bus is already running and would never start it; subscribe before "
                "start() (or `async with bus`)"
            )

    def chain_for(self, spec: SubscriptionSpec) -> list[Middleware]:
        """The middleware around ``spec``'s handlers, outermost first (see middleware.chain)."""
        defaults = ChainDefaults(
            self.middleware,
            self.retry,
            self.idempotency,
            self.dead_letter,
            replies=self._reply_step,
        )
        return build_chain(spec, self.adapter, defaults)

    def _reply_step(self, spec: SubscriptionSpec) -> Middleware | None:
        return reply_step(spec, self)

    # -- declaring what it publishes --------------------------------------------------

    def publishes(self, *messages: type[Message]) -> Callable[[F], F]:
        """Declare the event and command classes this service publishes, for its
        AsyncAPI document (``eventbus asyncapi``); publishing works without it.

        Call it, or stack it on the handler that publishes::

            @bus.publishes(PaymentCharged)
            @bus.subscribe(OrderPlaced, group="billing")
            async def charge(event: OrderPlaced, ctx: Context) -> None: ...
        """
        for cls in messages:
            if not (isinstance(cls, type) and issubclass(cls, Message)):
                raise ConfigurationError(
                    f"publishes() takes Event or Command classes, not {cls!r} (a "
                    f"{type(cls).__name__!r}); pass the class, e.g. publishes(OrderPlaced)"
                )
            if cls not in self._published:
                self._published.append(cls)

        def unchanged(fn: F) -> F:
            return fn

        return unchanged

    @property
    def published(self) -> list[type[Message]]:
        """What :meth:`publishes` declared, in the order first declared."""
        return list(self._published)

    # -- publishing ------------------------------------------------------------------

    def envelope_for(
        self,
        message: Message,
        *,
        key: str | None = None,
        parent: ParentOption = INHERIT,
        correlation_id: str | None = None,
        subject: str | None = None,
        extensions: dict[str, str] | None = None,
    ) -> Envelope:
        """The envelope ``publish`` would send for ``message``.

        ``parent`` defaults to the envelope being handled (when called from a
        handler); ``parent=None`` starts a new flow.
        """
        return build_envelope(
            message,
            self.source,
            key=key,
            parent=parent,
            correlation_id=correlation_id,
            subject=subject,
            extensions=extensions,
            payload_format=self.payload_format,
        )

    async def publish(
        self,
        message: Message,
        *,
        topic: str | None = None,
        wire_format: WireFormatOption | None = None,
        **options: Unpack[PublishOptions],
    ) -> Envelope:
        """Publish ``message``; returns its envelope once the broker has confirmed it.

        Options: ``key`` (partition key: same key, same order), ``parent`` (the
        envelope that caused it; defaults to the one being handled, ``None`` starts
        a new flow), ``correlation_id``, ``subject``, ``extensions``. The bus's
        ``publish_middleware`` runs around it. ``wire_format`` (default: the bus's)
        writes it as a CloudEvent, or as ``"plain"`` data for a consumer that is not
        eventbus (see :mod:`eventbus.wire`).
        """
        root = self.trace_root
        if root is None or not isinstance(message, Message):
            envelope = self.envelope_for(message, **options)
            target = topic or message.default_topic()
        else:
            target = topic or message.default_topic()
            envelope = build_envelope(
                message,
                self.source,
                payload_format=self.payload_format,
                trace_root=root,
                topic=target,
                **options,
            )
        (sent,) = await self.publish_envelopes(target, [envelope], wire_format=wire_format)
        return sent

    async def send(self, command: Command, **options: Unpack[PublishOptions]) -> Envelope:
        """Send a command to the one group that handles it."""
        if not isinstance(command, Message):
            raise not_a_message(command, "send", Command)
        if not isinstance(command, Command):
            raise ConfigurationError(
                f"send() takes a Command; {type(command).__name__} is an event — publish it"
            )
        return await self.publish(command, **options)

    @overload
    async def request(
        self,
        command: Command,
        *,
        timeout: float = ...,
        reply_type: type[R],
        **options: Unpack[PublishOptions],
    ) -> R: ...
    @overload
    async def request(
        self,
        command: Command,
        *,
        timeout: float = ...,
        reply_type: None = ...,
        **options: Unpack[PublishOptions],
    ) -> Any: ...
    async def request(
        self,
        command: Command,
        *,
        timeout: float = 30.0,
        reply_type: type[R] | None = None,
        **options: Unpack[PublishOptions],
    ) -> Any:
        """Send ``command`` and wait for its handler's reply (any broker).

        Returns what the handler returned: a Message decoded to its class, any other
        value as JSON data (validated as ``reply_type`` when given). Raises
        :class:`~eventbus.requests.RequestFailedError` (with the handler error's type
        and message) when the handler failed for good, and
        :class:`~eventbus.requests.RequestTimeoutError` after ``timeout`` seconds.
        One reply topic and subscription serve every request of this bus (see
        :mod:`eventbus.requests`). Needs a started bus.
        """
        if not self._started:
            raise ConfigurationError(
                f"request({type(command).__name__}) before start(): start the bus "
                "(or `async with bus`) first"
            )
        if self._requester is None:
            self._requester = Requester(self)
        return await self._requester.request(
            command, timeout=timeout, reply_type=reply_type, **options
        )

    async def publish_many(
        self,
        messages: Sequence[Message],
        *,
        topic: str | None = None,
        wire_format: WireFormatOption | None = None,
        **options: Unpack[PublishOptions],
    ) -> list[Envelope]:
        """Publish a batch (one broker round trip per topic).

        On partial failure (also when one topic of several failed after others went
        out) raises :class:`BatchPublishError`: ``failures`` and ``succeeded`` are
        indexes into ``messages``, ``envelopes`` what to republish with the same ids.
        """
        envelopes = build_envelopes(
            messages,
            self.source,
            payload_format=self.payload_format,
            trace_root=self.trace_root,
            topic=topic,
            **options,
        )

        async def publish(target: str, batch: Sequence[Envelope]) -> list[Envelope]:
            return await self.publish_envelopes(target, batch, wire_format=wire_format)

        return await publish_batch(publish, messages, envelopes, topic)

    async def publish_envelopes(
        self,
        topic: str,
        envelopes: Sequence[Envelope],
        *,
        wire_format: WireFormatOption | None = None,
    ) -> list[Envelope]:
        """Publish ready envelopes through the publish middleware; returns them as sent.

        A middleware may replace envelopes (tracing headers): when the broker got as
        many as were given, those are returned; otherwise (an outbox kept them) the
        envelopes given are. ``wire_format`` as for :meth:`publish`.
        """
        wire = (
            self.wire_format
            if wire_format is None
            else resolve_wire_format(wire_format, "publish(...)")
        )
        if not self._started and self._closer is None:
            await self._close_at_loop_end()
        sent: list[Envelope] = list(envelopes)
        layers = self.publish_middleware
        count = len(layers)
        if 0 < count < 3:
            last = layers[-1]
            if (
                isinstance(last, PassingPublishLayer)
                and (count == 1 or isinstance(layers[0], PublishObserver))
                and last.passes(topic, envelopes)
            ):
                count -= 1  # it would only hand them on (tracing, a dropped new trace)
        if not count:  # nothing may replace them: what is sent is what was given
            await publish_with_retry(self.adapter, topic, sent, self.publish_timeout, wire)
            return sent
        first = layers[0]
        observer = first if isinstance(first, PublishObserver) else None
        if observer is not None and count == 1:
            # An observer alone (metrics): its before/after here, around the broker's
            # publish, without a coroutine of its own; it replaces nothing.
            mark = observer.before(topic, envelopes)
            try:
                await publish_with_retry(self.adapter, topic, sent, self.publish_timeout, wire)
            except BaseException as exc:
                observer.after(topic, envelopes, mark, exc)
                raise
            observer.after(topic, envelopes, mark, None)
            return sent

        async def to_broker(target: str, final: Sequence[Envelope]) -> None:
            await publish_with_retry(self.adapter, target, final, self.publish_timeout, wire)
            if len(final) == len(sent):
                sent[:] = final

        if observer is None:
            # the outermost layer called directly: no step of its own per publish
            inner = to_broker if len(layers) == 1 else compose_publish(layers[1:], to_broker)
            await first(topic, list(envelopes), inner)
            return sent
        # An observer outermost, then layers that may replace the envelopes (tracing).
        mark = observer.before(topic, envelopes)
        try:
            inner = to_broker if len(layers) == 2 else compose_publish(layers[2:], to_broker)
            await layers[1](topic, list(envelopes), inner)
        except BaseException as exc:
            observer.after(topic, envelopes, mark, exc)
            raise
        observer.after(topic, envelopes, mark, None)
        return sent

    async def _close_at_loop_end(self) -> None:
        """Close the adapter a publish on this never-started bus connects, when the
        event loop shuts down (``asyncio.run`` closes the async generators it has left):
        nobody else would, and a client left open at exit leaves its tasks pending
        ("Task was destroyed but it is pending!"). :meth:`stop` does it sooner."""

        async def close_at_the_end() -> AsyncGenerator[None, None]:
            try:
                yield
            finally:
                if self._closer is not None:  # the loop ends and stop() never came
                    self._closer = None
                    if not self._started:
                        await self._close_quietly()

        self._closer = close_at_the_end()
        await anext(self._closer)  # now the loop knows of it, suspended until its shutdown

    async def _close_quietly(self) -> None:
        try:
            await asyncio.wait_for(self.adapter.close(), self.shutdown_timeout)
        except Exception as exc:  # the loop may be ending: say so, never raise from here
            log.warning(
                "closing %s after publishing on a bus never started failed: %s: %s",
                mask_url(self.adapter.url),
                type(exc).__name__,
                exc,
            )

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and start every subscription."""
        if self._started:
            return
        try:
            await self._bounded(self.adapter.connect(), "connecting")
        except BaseException:
            # A connect that failed or was cut short may leave a socket or a client task
            # behind: close what there is (bounded) before reporting the failure.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self.adapter.close(), 5.0)
            raise
        self._started = True
        self._stopped = asyncio.Event()
        self._failed = asyncio.Event()
        self._dead = []
        try:
            for spec in self._specs.values():
                runner = Runner(
                    self.adapter,
                    spec,
                    middleware=self.chain_for(spec),
                    registry=self.registry,
                    publisher=self,
                    prefetch=self.prefetch_per_worker,
                    dead_letter=self.dead_letter,
                    on_dead=self._on_dead,
                    warn_after=self.warn_after,
                    stall_after=self.stall_after,
                    redelivery_backoff=self.redelivery_backoff,
                )
                await self._bounded(
                    runner.start(), f"subscribing to {spec.topic!r} as group {spec.group!r}"
                )
                self._runners.append(runner)
            for hook in self._on_start:
                await hook()
        except BaseException:
            await self.stop()
            raise

    async def _bounded(self, step: Awaitable[None], what: str) -> None:
        """``step`` within ``start_timeout``: a broker that takes the connection and never
        answers (or holds a subscribe, as a RabbitMQ memory alarm can) fails the start."""
        try:
            await asyncio.wait_for(step, self.start_timeout)
        except TimeoutError as exc:
            raise BrokerConnectionError(
                f"{what} on {mask_url(self.adapter.url)} did not finish within "
                f"start_timeout={self.start_timeout:g}s: the broker accepts connections but "
                "does not answer; check that it is healthy (not blocked by an alarm)"
            ) from exc

    def on_start(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Await ``hook()`` each time the bus has started (connected, every subscription
        attached): to start what runs beside it, such as the metrics' sampler. A hook
        that raises fails ``start()``."""
        self._on_start.append(hook)

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Await ``hook()`` each time the bus stops, before its subscriptions stop; a
        hook that raises is logged and the bus stops all the same."""
        self._on_stop.append(hook)

    def _on_dead(self, runner: Runner) -> None:
        self._dead.append(runner)
        self._failed.set()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop fetching, let in-flight handlers finish (up to ``timeout``), close the
        adapter and the idempotency stores the bus was given (their ``close()``).

        On a bus never started that published (which connects its adapter), closes the
        adapter."""
        closer, self._closer = self._closer, None
        if closer is not None:
            await closer.aclose()  # done with: its finally sees _closer unset and returns
        if not self._started:
            if closer is not None:  # only published: that connected the adapter
                await self._close_quietly()
            return
        self._started = False
        timeout = self.shutdown_timeout if timeout is None else timeout
        requester, self._requester = self._requester, None
        for hook in self._on_stop:
            try:
                await hook()
            except Exception as exc:
                log.error(
                    "on_stop hook %r failed (%s: %s); stopping all the same",
                    hook,
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
        try:
            if requester is not None:
                await requester.close()
            await asyncio.gather(*(r.stop(timeout) for r in self._runners))
            self._runners.clear()
            await self.adapter.close()
        finally:
            await self._close_stores()
            self._stopped.set()

    async def _close_stores(self) -> None:
        stores: list[object] = []
        for store in (self.idempotency, *(s.idempotency for s in self._specs.values())):
            if isinstance(store, Idempotency):
                store = store.store
            if store is not None and not any(store is seen for seen in stores):
                stores.append(store)
        for given in stores:
            close = getattr(given, "close", None)
            if close is None:
                continue
            try:
                result = close()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                log.warning(
                    "closing idempotency store %r failed: %s: %s", given, type(exc).__name__, exc
                )

    async def health(self, *, backlog: bool = False) -> BusHealth:
        """The adapter's health and each subscription's state (running, reconnecting,
        dead with its error, stopped).

        ``backlog=True`` also asks the broker, for each running subscription, how many
        messages it holds for the group (``SubscriptionHealth.backlog``: ``None``
        where the adapter cannot tell or the broker did not answer within 5 s); the
        metrics' consumer-lag gauge reads it."""
        try:
            adapter = await self.adapter.health()
        except Exception as exc:
            adapter = HealthReport(ok=False, detail=f"{type(exc).__name__}: {exc}")
        runners = list(self._runners)
        subscriptions = [runner.health() for runner in runners]
        if backlog:
            counts = await asyncio.gather(*(runner.backlog() for runner in runners))
            subscriptions = [
                dataclasses.replace(health, backlog=count)
                for health, count in zip(subscriptions, counts, strict=True)
            ]
        problems = [
            f"{s.topic}/{s.group} is {s.state}: {s.error}"
            for s in subscriptions
            if s.state != "running"
        ]
        if not self._started:
            problems.insert(0, "the bus is not started")
        if not adapter.ok:
            problems.insert(0, f"adapter: {adapter.detail or 'not ok'}")
        return BusHealth(not problems, adapter, subscriptions, "; ".join(problems))

    async def run(self) -> None:
        """Run until SIGTERM or SIGINT, then shut down gracefully.

        Raises :class:`~eventbus.errors.SubscriptionFailedError` (after shutting
        down) when a subscription died for good, so the process exits non-zero
        instead of sitting idle.
        """
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            # A signal while starting (a broker that takes the connection and never
            # answers) cuts the start short instead of waiting for start_timeout.
            starting = asyncio.ensure_future(self.start())
            stopping = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if not starting.done():
                log.info("signal received while starting; giving up the start")
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                return
            starting.result()
            log.info(
                "eventbus running on %s with %d subscription(s)",
                type(self.adapter).__name__,
                len(self._specs),
            )
            waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._failed.wait())]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()
            dead = [r.health() for r in self._dead]
            if dead:
                raise SubscriptionFailedError(
                    "subscription(s) died for good: "
                    + "; ".join(f"{h.topic}/{h.group}: {h.error}" for h in dead)
                    + "; fix the cause and restart the service"
                )
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


def _name(target: type[Message] | str) -> str:
    return target.__name__ if isinstance(target, type) else repr(target)
