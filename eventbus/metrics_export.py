"""Where :mod:`eventbus.metrics`' figures are read: a prometheus-client collector
registered once per registry, and OpenTelemetry instruments of the same names.

Both read the plain counters of a :class:`~eventbus.metrics.Store` when they are
scraped or collected; only the two duration histograms are recorded as they happen
on the OpenTelemetry side (it has no asynchronous histogram). Each library is
imported only when it is exported to.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from eventbus import __version__
from eventbus.metrics import OUTCOMES, Histogram, Store

log = logging.getLogger("eventbus.metrics")

_STORES: weakref.WeakKeyDictionary[Any, Store] = weakref.WeakKeyDictionary()

COUNTERS: tuple[tuple[str, str, str], ...] = (
    (
        "failed",
        "failed",
        "Failed runs of a handler, and messages that failed without running (poison, refused).",
    ),
    ("retried", "retried", "Runs of a handler again in process after a failure."),
    ("redelivered", "redelivered", "Deliveries the broker made again (delivery attempt > 1)."),
    ("dead_lettered", "dead_lettered", "Messages moved to the dead-letter topic."),
)
"""Per (topic, group, type): metric name, ``Flow`` attribute, help text."""
HANDLED_HELP = (
    "Handlings of a message by their outcome: success, skipped, redelivery, "
    "dead_lettered, error, cancelled."
)
PUBLISHED_HELP = "Messages published, by outcome: ok (the broker confirmed) or error."
HANDLER_HELP = "Time from the chain's start to the handling's outcome (retries included)."
PUBLISH_HELP = "Time of one publish call until the broker confirmed it."
GAUGES: tuple[tuple[str, str, str, str], ...] = (
    ("in_flight", "in_flight", "in_flight", "Handlings running now."),
    (
        "prefetch_in_use",
        "prefetch.in_use",
        "use",
        "Deliveries held (waiting, collected or running) now.",
    ),
    (
        "prefetch_limit",
        "prefetch.limit",
        "limit",
        "Unsettled deliveries the subscription asked the broker for.",
    ),
    (
        "consumer_lag",
        "consumer.lag",
        "lag",
        "Messages the broker holds for the group, where the adapter can tell.",
    ),
)
"""Per (topic, group): Prometheus name, OpenTelemetry name, ``Subscription`` attribute,
help text."""


def store_for(registry: Any, bounds: tuple[float, ...], max_topics: int) -> Store:
    """The store exported to ``registry`` (``"default"``: prometheus-client's; ``None``:
    none), made and registered on first use; under ``$PROMETHEUS_MULTIPROC_DIR`` the
    default registry's figures go to the multiprocess files."""
    if registry is None:
        return Store(bounds, max_topics)
    multiprocess = False
    if registry == "default":
        registry = _prometheus().REGISTRY
        # The scrape of a multiprocess service reads the processes' files, which only
        # prometheus-client's own metric objects write (eventbus.metrics_multiprocess).
        multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    found = _STORES.get(registry)
    if found is None:
        found = _STORES[registry] = Store(bounds, max_topics)
        if multiprocess:
            from eventbus.metrics_multiprocess import MultiprocessMirror

            MultiprocessMirror(found, registry)
        else:
            registry.register(PrometheusCollector(found))
    elif found.bounds != bounds:
        log.warning(
            "a second Metrics on this registry asked for other buckets; it shares "
            "the first one's figures and buckets %s",
            found.bounds,
        )
    return found


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ModuleNotFoundError as missing:  # the `prometheus` extra, not the library
        raise ModuleNotFoundError(
            "Metrics exports to prometheus-client's registry, which the library alone does "
            'not install: pip install "eventbus[prometheus]" (or Metrics(registry=None, '
            "meter_provider=...) for OpenTelemetry only)",
            name=missing.name,
        ) from missing
    return prometheus_client


def _cumulative(histogram: Histogram) -> tuple[list[tuple[str, float]], float]:
    from prometheus_client.utils import floatToGoString

    counts, total = list(histogram.counts), histogram.total  # copied: one consistent read
    buckets, running = [], 0
    for bound, count in zip((*histogram.bounds, float("inf")), counts, strict=True):
        running += count
        buckets.append((floatToGoString(bound), float(running)))  # type: ignore[no-untyped-call]
    return buckets, total


class PrometheusCollector:
    """Yields a store's figures as Prometheus metric families when scraped (from any
    thread: it only reads)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def describe(self) -> Iterator[Any]:
        return self._families(with_samples=False)

    def collect(self) -> Iterator[Any]:
        return self._families(with_samples=True)

    def _families(self, *, with_samples: bool) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        store = self.store
        flows = list(store.flows.values()) if with_samples else []
        flow_labels = ["topic", "group", "type"]
        published = CounterMetricFamily(
            "eventbus_published", PUBLISHED_HELP, labels=["topic", "type", "outcome"]
        )
        for (topic, kind, ended), count in list(store.published.items()) if with_samples else []:
            published.add_metric([topic, kind, ended], count)
        yield published
        publish_duration = HistogramMetricFamily(
            "eventbus_publish_duration_seconds", PUBLISH_HELP, labels=["topic"]
        )
        for topic, histogram in list(store.publish_durations.items()) if with_samples else []:
            publish_duration.add_metric([topic], *_cumulative(histogram))
        yield publish_duration
        handled = CounterMetricFamily(
            "eventbus_handled", HANDLED_HELP, labels=[*flow_labels, "outcome"]
        )
        for flow in flows:
            for ended in OUTCOMES:
                handled.add_metric([*flow.labels, ended], flow.outcomes[ended])
        yield handled
        for name, attribute, help_text in COUNTERS:
            family = CounterMetricFamily(f"eventbus_{name}", help_text, labels=flow_labels)
            for flow in flows:
                family.add_metric(list(flow.labels), getattr(flow, attribute))
            yield family
        duration = HistogramMetricFamily(
            "eventbus_handler_duration_seconds", HANDLER_HELP, labels=flow_labels
        )
        for flow in flows:
            duration.add_metric(list(flow.labels), *_cumulative(flow.duration))
        yield duration
        subscriptions = list(store.subscriptions.items()) if with_samples else []
        for name, _, attribute, help_text in GAUGES:
            gauge = GaugeMetricFamily(f"eventbus_{name}", help_text, labels=["topic", "group"])
            for (topic, group), gauges in subscriptions:
                value = getattr(gauges, attribute)
                if attribute != "in_flight" and not gauges.live:
                    continue  # not sampled from a running bus (yet, or any more)
                if value is not None:
                    gauge.add_metric([topic, group], value)
            yield gauge


class OtelInstruments:
    """The same instruments on an OpenTelemetry meter (dotted names: ``eventbus.handled``,
    ``eventbus.handler.duration`` ...; the same labels as attributes)."""

    def __init__(self, store: Store, meter: Any) -> None:
        from opentelemetry.metrics import Observation

        self.store = store

        def observe(
            read: Callable[[], Iterable[tuple[float, dict[str, str]]]],
        ) -> Callable[[Any], Iterable[Any]]:
            def callback(options: Any) -> Iterable[Any]:
                return [Observation(value, attributes) for value, attributes in read()]

            return callback

        meter.create_observable_counter(
            "eventbus.published", [observe(self._published)], "{message}", PUBLISHED_HELP
        )
        meter.create_observable_counter(
            "eventbus.handled", [observe(self._handled)], "{message}", HANDLED_HELP
        )
        for name, attribute, help_text in COUNTERS:
            meter.create_observable_counter(
                f"eventbus.{name}", [observe(self._per_flow(attribute))], "{message}", help_text
            )
        for _, name, attribute, help_text in GAUGES:
            meter.create_observable_gauge(
                f"eventbus.{name}",
                [observe(self._per_subscription(attribute))],
                "{message}",
                help_text,
            )
        self.handler_duration = meter.create_histogram(
            "eventbus.handler.duration",
            "s",
            HANDLER_HELP,
            explicit_bucket_boundaries_advisory=store.bounds,
        )
        self.publish_duration = meter.create_histogram(
            "eventbus.publish.duration",
            "s",
            PUBLISH_HELP,
            explicit_bucket_boundaries_advisory=store.bounds,
        )

    def _published(self) -> Iterable[tuple[float, dict[str, str]]]:
        for (topic, kind, ended), count in list(self.store.published.items()):
            yield count, {"topic": topic, "type": kind, "outcome": ended}

    def _handled(self) -> Iterable[tuple[float, dict[str, str]]]:
        for flow in list(self.store.flows.values()):
            for ended in OUTCOMES:
                yield flow.outcomes[ended], {**flow.otel, "outcome": ended}

    def _per_flow(self, attribute: str) -> Callable[[], Iterable[tuple[float, dict[str, str]]]]:
        def read() -> Iterable[tuple[float, dict[str, str]]]:
            for flow in list(self.store.flows.values()):
                yield getattr(flow, attribute), flow.otel

        return read

    def _per_subscription(
        self, attribute: str
    ) -> Callable[[], Iterable[tuple[float, dict[str, str]]]]:
        def read() -> Iterable[tuple[float, dict[str, str]]]:
            for (topic, group), gauges in list(self.store.subscriptions.items()):
                value = getattr(gauges, attribute)
                if (attribute == "in_flight" or gauges.live) and value is not None:
                    yield value, {"topic": topic, "group": group}

        return read


def export_to_meter(store: Store, meter_provider: Any) -> None:
    """Export ``store`` as OpenTelemetry instruments of ``meter_provider`` (once)."""
    if store.otel is not None:
        return
    try:
        import opentelemetry.metrics  # noqa: F401
    except ModuleNotFoundError as missing:  # the `otel` extra, not the library
        raise ModuleNotFoundError(
            "Metrics(meter_provider=...) needs opentelemetry-api, which the library alone "
            'does not install: pip install "eventbus[otel]"',
            name=missing.name,
        ) from missing
    meter = meter_provider.get_meter("eventbus", __version__)
    store.otel = OtelInstruments(store, meter)
