""":mod:`eventbus.metrics` under prometheus-client's multiprocess mode
(``$PROMETHEUS_MULTIPROC_DIR`` set, as ``eventbus run --workers N --metrics-port M``
does): the scrape adds up files each process writes, and a custom collector writes none,
so the figures are copied into the library's own Counter, Histogram and Gauge objects.

The copy is made every :data:`FLUSH_EVERY` seconds while a bus runs, when it stops and
when the process exits, rather than per message: each write to those objects takes a
lock and an mmap write (~1-2 µs), five or more per message. A scrape therefore sees a
worker's figures up to a second late; a worker killed by SIGKILL loses at most that
second's counts.

How the gauges add up over the workers (their ``multiprocess_mode``): in flight, the
prefetch in use and its limit are summed over the live workers (``livesum``); the lag is
the group's backlog as the broker tells it, which every worker of the group sees alike,
so the highest live one is shown (``livemax``), not N times it. A dead worker's gauges
leave the scrape (the supervisor marks it dead); its counters stay counted.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from typing import Any, Literal

from eventbus.metrics import OUTCOMES, Histogram, Store
from eventbus.metrics_export import (
    COUNTERS,
    GAUGES,
    HANDLED_HELP,
    HANDLER_HELP,
    PUBLISH_HELP,
    PUBLISHED_HELP,
)

__all__ = ["FLUSH_EVERY", "MultiprocessMirror"]

log = logging.getLogger("eventbus.metrics")

FLUSH_EVERY = 1.0
"""Seconds between copies of the figures into the multiprocess files while a bus runs."""
GAUGE_MODES: dict[str, Literal["livesum", "livemax"]] = {
    "in_flight": "livesum",
    "prefetch_in_use": "livesum",
    "prefetch_limit": "livesum",
    "consumer_lag": "livemax",
}
"""How each gauge adds up over the live workers (see the module doc)."""

_MIRRORS: weakref.WeakSet[MultiprocessMirror] = weakref.WeakSet()


def _flush_all_at_exit() -> None:
    for mirror in list(_MIRRORS):
        try:
            mirror.flush()
        except Exception as exc:  # the directory may be gone; say so, never fail the exit
            log.warning(
                "writing the last metrics to $PROMETHEUS_MULTIPROC_DIR at exit "
                "failed (%s: %s); this process's last second of counts is lost",
                type(exc).__name__,
                exc,
            )


atexit.register(_flush_all_at_exit)  # what a draining worker handled after the last flush


class MultiprocessMirror:
    """Copies a :class:`~eventbus.metrics.Store` into prometheus-client metric objects
    registered on ``registry``; :meth:`flush` adds what changed since the last call."""

    def __init__(self, store: Store, registry: Any) -> None:
        from prometheus_client import Counter, Gauge
        from prometheus_client import Histogram as PromHistogram

        self.store = store
        flow_labels = ["topic", "group", "type"]
        self.published = Counter(
            "eventbus_published", PUBLISHED_HELP, ["topic", "type", "outcome"], registry=registry
        )
        self.publish_duration = PromHistogram(
            "eventbus_publish_duration_seconds",
            PUBLISH_HELP,
            ["topic"],
            buckets=store.bounds,
            registry=registry,
        )
        self.handled = Counter(
            "eventbus_handled", HANDLED_HELP, [*flow_labels, "outcome"], registry=registry
        )
        self.counters = {
            attribute: Counter(f"eventbus_{name}", help_text, flow_labels, registry=registry)
            for name, attribute, help_text in COUNTERS
        }
        self.handler_duration = PromHistogram(
            "eventbus_handler_duration_seconds",
            HANDLER_HELP,
            flow_labels,
            buckets=store.bounds,
            registry=registry,
        )
        self.gauges = {
            attribute: Gauge(
                f"eventbus_{name}",
                help_text,
                ["topic", "group"],
                registry=registry,
                multiprocess_mode=GAUGE_MODES[name],
            )
            for name, _, attribute, help_text in GAUGES
        }
        self._counted: dict[tuple[Any, ...], float] = {}  # what each child was given
        self._children: dict[tuple[Any, ...], Any] = {}
        store.mirror = self
        _MIRRORS.add(self)

    def flush(self) -> None:
        """Add to the metric objects what the store counted since the last flush, and
        set the gauges to the store's values."""
        store = self.store
        for (topic, kind, ended), count in list(store.published.items()):
            self._add(self.published, (topic, kind, ended), count)
        for topic, histogram in list(store.publish_durations.items()):
            self._observe(self.publish_duration, (topic,), histogram)
        for flow in list(store.flows.values()):
            for ended in OUTCOMES:
                self._add(self.handled, (*flow.labels, ended), flow.outcomes[ended])
            for attribute, counter in self.counters.items():
                self._add(counter, flow.labels, getattr(flow, attribute))
            self._observe(self.handler_duration, flow.labels, flow.duration)
        for (topic, group), gauges in list(store.subscriptions.items()):
            for attribute, gauge in self.gauges.items():
                value = getattr(gauges, attribute)
                if attribute != "in_flight" and not gauges.live:
                    # A stopped bus holds nothing and its lag is unknown; a multiprocess
                    # gauge cannot leave the scrape, so what it reported goes to 0.
                    value = 0 if (id(gauge), topic, group) in self._children else None
                if value is not None:
                    self._child(gauge, (topic, group)).set(value)

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def _add(self, counter: Any, labels: tuple[str, ...], total: float) -> None:
        key = (id(counter), *labels)
        child = self._child(counter, labels)  # made at 0 even before a first count
        delta = total - self._counted.get(key, 0)
        if delta > 0:
            child.inc(delta)
            self._counted[key] = total

    def _observe(self, metric: Any, labels: tuple[str, ...], histogram: Histogram) -> None:
        # prometheus-client's Histogram takes one observation at a time; the counts are
        # already bucketed here, so they go to its per-bucket values and sum directly
        # (private attributes, present since its first releases; tests/
        # test_metrics_multiprocess.py notices if they change).
        child = self._child(metric, labels)
        counts, total = list(histogram.counts), histogram.total
        for index, count in enumerate(counts):
            key = (id(metric), *labels, index)
            delta = count - self._counted.get(key, 0)
            if delta > 0:
                child._buckets[index].inc(delta)
                self._counted[key] = count
        key = (id(metric), *labels, "sum")
        delta = total - self._counted.get(key, 0.0)
        if delta:
            child._sum.inc(delta)
            self._counted[key] = total
