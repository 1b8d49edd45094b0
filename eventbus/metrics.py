"""Metrics: what the buses published and handled, how long it took, and what waits.

(Over 400 lines on purpose: one observer and the instrument table it feeds, for
Prometheus and OpenTelemetry alike.)

Exported to Prometheus (``pip install eventbus[prometheus]``: prometheus-client's
default registry unless another is given, which ``eventbus run --metrics-port``
serves) and, if a ``meter_provider`` is given, as OpenTelemetry instruments of the
same names (``pip install eventbus[otel]`` plus the SDK)::

    from eventbus.metrics import Metrics

    bus = Metrics().instrument(EventBus.from_env(source="billing"))

The instruments (labels in brackets; ``type`` is the event type, ``other`` for a
type this process has no class for, so a stranger's messages cannot grow the
series without bound; ``topic`` on the publishing side is ``replies`` for reply
topics and ``other`` past ``max_topics`` distinct topics):

- counters ``eventbus_published_total`` [topic, type, outcome: ok | error],
  ``eventbus_handled_total`` [topic, group, type, outcome: success | skipped |
  redelivery | dead_lettered | error | cancelled, see
  :func:`eventbus.incidents.outcome`], ``eventbus_failed_total`` (failed runs of a
  handler, and messages that failed without running: poison, refused),
  ``eventbus_retried_total`` (runs again in process), ``eventbus_redelivered_total``
  (deliveries the broker made again), ``eventbus_dead_lettered_total`` [topic, group,
  type];
- histograms ``eventbus_handler_duration_seconds`` [topic, group, type] (from the
  chain's start to its outcome, retries in process included; a batch call once) and
  ``eventbus_publish_duration_seconds`` [topic] (one publish call, until the broker
  confirmed);
- gauges [topic, group]: ``eventbus_in_flight`` (handlings running now),
  ``eventbus_prefetch_in_use`` and ``eventbus_prefetch_limit`` (deliveries held
  against the prefetch asked for), ``eventbus_consumer_lag`` (what the broker holds
  for the group, where the adapter can tell: Kafka partition lag, Streams pending,
  JetStream ``num_pending``, SQS visible messages, RabbitMQ queue depth); the last
  three are sampled every ``sample_every`` seconds while the bus runs.

Counting costs a few plain integer additions per message; the figures are read
when the registry is scraped (or the meter collected). Under prometheus-client's
multiprocess mode (``$PROMETHEUS_MULTIPROC_DIR``, as ``eventbus run --workers N``
sets) the default registry's figures are copied to its files every second instead
(:mod:`eventbus.metrics_multiprocess`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from bisect import bisect_left
from collections.abc import Collection, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Any

from eventbus.adapter import Delivery
from eventbus.context import NO_RESULT, Context
from eventbus.envelope import Envelope
from eventbus.events import Registry
from eventbus.incidents import incidents, outcome
from eventbus.middleware.base import Observer, PublishObserver

if TYPE_CHECKING:
    from eventbus.bus import EventBus

__all__ = ["DURATION_BUCKETS", "OUTCOMES", "Metrics", "is_instrumented"]

log = logging.getLogger("eventbus.metrics")

DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Upper bounds (seconds) of the duration histograms' buckets; ``+Inf`` is added."""
OUTCOMES = ("success", "skipped", "redelivery", "dead_lettered", "error", "cancelled")
OTHER = "other"
REPLIES = "replies"


class Histogram:
    """Bucket counts and a sum, updated with plain arithmetic (read at scrape time)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class Subscription:
    """The gauges of one (topic, group)."""

    __slots__ = ("in_flight", "lag", "limit", "live", "use")

    def __init__(self) -> None:
        self.in_flight = 0
        self.use = 0
        self.limit = 0
        self.lag: int | None = None
        self.live = False  # sampled from a running bus


class Flow:
    """The counters and handler durations of one (topic, group, type)."""

    __slots__ = (
        "dead_lettered",
        "duration",
        "failed",
        "labels",
        "otel",
        "outcomes",
        "redelivered",
        "retried",
        "subscription",
    )

    def __init__(
        self, labels: tuple[str, str, str], subscription: Subscription, bounds: Sequence[float]
    ) -> None:
        self.labels = labels
        self.subscription = subscription
        self.outcomes = dict.fromkeys(OUTCOMES, 0)
        self.failed = self.retried = self.redelivered = self.dead_lettered = 0
        self.duration = Histogram(bounds)
        self.otel = {"topic": labels[0], "group": labels[1], "type": labels[2]}


class Store:
    """Every figure of the buses one :class:`Metrics` (or several, on one registry) watch."""

    def __init__(self, bounds: Sequence[float], max_topics: int) -> None:
        self.bounds = tuple(bounds)
        self.max_topics = max_topics
        self.flows: dict[tuple[str, str, str], Flow] = {}
        self.subscriptions: dict[tuple[str, str], Subscription] = {}
        self.published: dict[tuple[str, str, str], int] = {}
        self.publish_durations: dict[str, Histogram] = {}
        self.topics: set[str] = set()
        self._warned = False
        self.otel: Any = None  # eventbus.metrics_export.OtelInstruments, when exported there
        # eventbus.metrics_multiprocess.MultiprocessMirror, under $PROMETHEUS_MULTIPROC_DIR
        self.mirror: Any = None

    def flow(self, topic: str, group: str, kind: str) -> Flow:
        found = self.flows.get((topic, group, kind))
        if found is None:
            subscription = self.subscription(topic, group)
            found = self.flows[(topic, group, kind)] = Flow(
                (topic, group, kind), subscription, self.bounds
            )
        return found

    def subscription(self, topic: str, group: str) -> Subscription:
        found = self.subscriptions.get((topic, group))
        if found is None:
            found = self.subscriptions[(topic, group)] = Subscription()
        return found

    def topic_label(self, topic: str) -> str:
        """``topic``, ``replies`` for a reply topic, or ``other`` past ``max_topics``."""
        if topic in self.topics:
            return topic
        if topic.startswith("replies-"):  # eventbus.requests: one per requesting bus
            return REPLIES
        if len(self.topics) >= self.max_topics:
            if not self._warned:
                self._warned = True
                log.warning(
                    "more than %d topics published to: %r and later ones are "
                    "counted as topic %r (Metrics(max_topics=...) raises the bound)",
                    self.max_topics,
                    topic,
                    OTHER,
                )
            return OTHER
        self.topics.add(topic)
        return topic


class Handled(Observer):
    """The consuming side of :class:`Metrics` on one bus."""

    def __init__(self, store: Store, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        self._flows: dict[tuple[str, str, str], Flow] = {}  # by the raw type: known ones

    def _flow(self, topic: str, group: str, kind: str) -> Flow:
        found = self._flows.get((topic, group, kind))
        if found is not None:
            return found
        if self.registry.get(kind) is None:
            return self.store.flow(topic, group, OTHER)  # not remembered by its raw name
        found = self._flows[(topic, group, kind)] = self.store.flow(topic, group, kind)
        return found

    def begin(self, ctx: Context) -> object:
        key = (ctx.topic, ctx.group, ctx.envelope.type)
        flow = self._flows.get(key)  # _flow(), its common case inlined: this runs per message
        if flow is None:
            flow = self._flow(*key)
        flow.subscription.in_flight += 1
        if ctx.delivery.attempt > 1:
            flow.redelivered += 1
        return (flow, perf_counter())

    def end(self, ctx: Context, mark: object, failure: BaseException | None) -> None:
        flow: Flow
        started: float
        flow, started = mark  # type: ignore[misc]
        elapsed = perf_counter() - started
        flow.subscription.in_flight -= 1
        duration = flow.duration  # Histogram.observe, inlined: this runs per message
        duration.counts[bisect_left(duration.bounds, elapsed)] += 1
        duration.total += elapsed
        otel = self.store.otel
        if otel is not None:
            otel.handler_duration.record(elapsed, flow.otel)
        if failure is None and not ctx.items and ctx.result is not NO_RESULT:
            flow.outcomes["success"] += 1  # the common case, without looking further
            return
        ended = outcome(ctx, failure)
        flow.outcomes[ended] += 1
        for incident in incidents(ctx):
            if incident.kind == "retry":
                flow.retried += 1
                flow.failed += 1
            elif incident.kind == "redelivery":
                flow.failed += 1
            else:
                flow.dead_lettered += 1
        if ended in ("dead_lettered", "error"):
            flow.failed += 1

    def begin_batch(self, contexts: Sequence[Context]) -> object:
        first = contexts[0]
        flow = self._flow(first.topic, first.group, first.envelope.type)
        flow.subscription.in_flight += len(contexts)
        return (flow, perf_counter())

    def end_batch(
        self,
        contexts: Sequence[Context],
        mark: object,
        failed: Collection[int],
        failure: BaseException | None,
    ) -> None:
        flow: Flow
        started: float
        flow, started = mark  # type: ignore[misc]
        elapsed = perf_counter() - started
        flow.subscription.in_flight -= len(contexts)
        flow.duration.observe(elapsed)
        if self.store.otel is not None:
            self.store.otel.handler_duration.record(elapsed, flow.otel)
        # The failed ones are handled again one by one, each counted then.
        flow.outcomes["success"] += len(contexts) - len(failed)
        flow.failed += len(failed)

    def undecodable(self, delivery: Delivery, dead_lettered: bool) -> None:
        flow = self.store.flow(delivery.topic, delivery.group, OTHER)
        flow.failed += 1
        if dead_lettered:
            flow.dead_lettered += 1
            flow.outcomes["dead_lettered"] += 1
        else:
            flow.outcomes["error"] += 1


class Published(PublishObserver):
    """The publishing side of :class:`Metrics` on one bus (publish middleware)."""

    def __init__(self, store: Store, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        self._known: set[str] = set()  # types the registry has a class for (it only grows)
        # A lone publish's (publish durations, published key) by (topic, type), once
        # counted by _count: a known type to a topic whose label is settled.
        self._lone: dict[tuple[str, str], tuple[Histogram, tuple[str, str, str]]] = {}

    def before(self, topic: str, envelopes: Sequence[Envelope]) -> object:
        return perf_counter()

    def after(
        self, topic: str, envelopes: Sequence[Envelope], mark: object, failure: BaseException | None
    ) -> None:
        elapsed = perf_counter() - mark  # type: ignore[operator]
        if failure is not None:
            self._count(topic, envelopes, "error", elapsed)
            return
        if len(envelopes) == 1:  # _count(), a lone publish counted before, inlined
            found = self._lone.get((topic, envelopes[0].type))
            if found is not None and self.store.otel is None:
                durations, key = found
                durations.counts[bisect_left(durations.bounds, elapsed)] += 1
                durations.total += elapsed
                self.store.published[key] += 1
                return
        self._count(topic, envelopes, "ok", elapsed)

    def _count(self, topic: str, envelopes: Sequence[Envelope], ended: str, elapsed: float) -> None:
        store = self.store
        label = topic if topic in store.topics else store.topic_label(topic)
        durations = store.publish_durations.get(label)
        if durations is None:
            durations = store.publish_durations[label] = Histogram(store.bounds)
        durations.counts[bisect_left(durations.bounds, elapsed)] += 1  # observe(), inlined
        durations.total += elapsed
        if store.otel is not None:
            store.otel.publish_duration.record(elapsed, {"topic": label})
        published = store.published
        if len(envelopes) == 1:  # one publish(): no tally of the types
            kind = envelopes[0].type
            if kind not in self._known:
                if self.registry.get(kind) is None:
                    kind = OTHER
                else:
                    self._known.add(kind)
            key = (label, kind, ended)
            published[key] = published.get(key, 0) + 1
            if kind is not OTHER and ended == "ok" and label in (topic, REPLIES):
                if len(self._lone) > 1000:  # topics made up per message: keep it bounded
                    self._lone.clear()
                self._lone[(topic, kind)] = (durations, key)
            return
        kinds: dict[str, int] = {}
        for envelope in envelopes:
            kinds[envelope.type] = kinds.get(envelope.type, 0) + 1
        for kind, count in kinds.items():
            key = (label, kind if self.registry.get(kind) is not None else OTHER, ended)
            published[key] = published.get(key, 0) + count


class Metrics:
    """Counts what the buses it instruments publish and handle (see the module doc).

    ``registry``: the prometheus-client registry to export to (its default one
    unless given; ``None``: none); several ``Metrics`` on one registry share their
    figures. ``meter_provider``: also export as OpenTelemetry instruments. ``buckets``:
    the duration histograms' bounds; ``sample_every``: seconds between reads of the
    prefetch in use and the broker's backlog; ``max_topics``: distinct publishing
    topics labelled by name.
    """

    def __init__(
        self,
        *,
        registry: Any = "default",
        meter_provider: Any = None,
        buckets: Sequence[float] = DURATION_BUCKETS,
        sample_every: float = 5.0,
        max_topics: int = 100,
    ) -> None:
        from eventbus import metrics_export

        if not sample_every > 0:
            raise ValueError(
                f"sample_every must be a positive number of seconds, not {sample_every!r}"
            )
        self.sample_every = sample_every
        self.store = metrics_export.store_for(registry, tuple(sorted(buckets)), max_topics)
        if meter_provider is not None:
            metrics_export.export_to_meter(self.store, meter_provider)

    def instrument(self, bus: EventBus) -> EventBus:
        """Count ``bus``'s publishes and handlings (call before ``start()``); returns it.

        Adds the counting step first in ``bus.middleware`` and in
        ``bus.publish_middleware``, and samples the gauges while the bus runs.
        """
        bus.middleware.insert(0, Handled(self.store, bus.registry))
        bus.publish_middleware.insert(0, Published(self.store, bus.registry))
        sampler = Sampler(self.store, bus, self.sample_every)
        bus.on_start(sampler.start)
        bus.on_stop(sampler.stop)
        return bus


def is_instrumented(bus: EventBus) -> bool:
    """Whether a :class:`Metrics` already counts ``bus`` (``eventbus run --metrics-port``
    instruments a bus the service did not)."""
    return any(isinstance(layer, Handled) for layer in bus.middleware)


class Sampler:
    """Reads a running bus's prefetch in use and backlogs into the gauges."""

    def __init__(self, store: Store, bus: EventBus, every: float) -> None:
        self.store = store
        self.bus = bus
        self.every = every
        self._task: asyncio.Task[None] | None = None
        self._flushing: asyncio.Task[None] | None = None  # copies to the multiprocess files
        self._seen: set[tuple[str, str]] = set()

    async def start(self) -> None:
        # In a task of its own from the first read: a broker slow to say its backlog
        # must not hold up the bus's start.
        self._task = asyncio.create_task(self._run(), name="eventbus-metrics-sampler")
        if self.store.mirror is not None:
            self._flushing = asyncio.create_task(self._flush(), name="eventbus-metrics-flush")

    async def _flush(self) -> None:
        from eventbus.metrics_multiprocess import FLUSH_EVERY

        while True:
            await asyncio.sleep(FLUSH_EVERY)
            self.store.mirror.flush()

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception as exc:  # a health read never raises; stay alive regardless
                log.warning("sampling the bus's gauges failed (%s: %s)", type(exc).__name__, exc)
            await asyncio.sleep(self.every)

    async def sample(self) -> None:
        """Read every subscription's prefetch in use and backlog now."""
        health = await self.bus.health(backlog=True)
        for found in health.subscriptions:
            gauges = self.store.subscription(found.topic, found.group)
            gauges.use, gauges.limit, gauges.lag = found.held, found.prefetch, found.backlog
            gauges.live = True
            self._seen.add((found.topic, found.group))

    async def stop(self) -> None:
        tasks, self._task, self._flushing = (self._task, self._flushing), None, None
        for task in tasks:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for key in self._seen:  # a stopped bus holds nothing and has no lag to report
            gauges = self.store.subscription(*key)
            gauges.use, gauges.lag, gauges.live = 0, None, False
        if self.store.mirror is not None:
            self.store.mirror.flush()
