"""Metrics scraped from a prometheus-client registry after a run with successes, retries,
redeliveries and dead letters show the right counts; labels stay bounded; the gauges
follow a running bus; the same figures reach an OpenTelemetry meter."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from eventbus import Envelope, Event, EventBus, RetryPolicy
from eventbus.adapter import RawMessage
from eventbus.metrics import Metrics
from tests.bus_support import Collector, memory_url, run, until

TOPIC = "test-metrics-orders"


class Booked(Event, type="test.metrics.booked", topic=TOPIC):
    n: int


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of ``registry`` as the /metrics text gives it."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counts_after_successes_retries_redeliveries_and_dead_letters() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        metrics = Metrics(registry=registry)
        url = memory_url()
        # In process: two runs per delivery; "later": one run per delivery, then the broker.
        bus = metrics.instrument(
            EventBus(
                url,
                source="m",
                retry=RetryPolicy(
                    max_attempts=2, in_process_attempts=2, initial_delay=0.0, jitter=0.0
                ),
            )
        )
        runs: dict[tuple[str, int], int] = {}
        ended = Collector[str]()

        @bus.subscribe(Booked, group="now")
        async def now(event: Booked) -> None:
            runs[("now", event.n)] = runs.get(("now", event.n), 0) + 1
            if event.n == 3 and runs[("now", 3)] == 1:
                raise ValueError("first run fails")
            if event.n == 4:
                raise ValueError("always fails")
            ended.add(f"now {event.n}")

        later = metrics.instrument(
            EventBus(
                url,
                source="m",
                retry=RetryPolicy(
                    max_attempts=2, in_process_attempts=1, initial_delay=0.0, jitter=0.0
                ),
            )
        )

        @later.subscribe(Booked, group="later")
        async def fails(event: Booked) -> None:
            if event.n == 0:
                raise ValueError("always fails")

        async with bus, later:
            await bus.publish_many([Booked(n=n) for n in range(5)])
            await ended.wait_count(4)

            def settled() -> bool:
                found = scrape(registry)
                return (
                    value(
                        found,
                        "eventbus_dead_lettered_total",
                        topic=TOPIC,
                        group="now",
                        type=Booked.event_type(),
                    )
                    == 1
                    and value(
                        found,
                        "eventbus_dead_lettered_total",
                        topic=TOPIC,
                        group="later",
                        type=Booked.event_type(),
                    )
                    == 1
                    and value(
                        found,
                        "eventbus_handled_total",
                        topic=TOPIC,
                        group="later",
                        type=Booked.event_type(),
                        outcome="success",
                    )
                    == 4
                )

            await until(settled)
            samples = scrape(registry)

        kind = Booked.event_type()
        now_labels = {"topic": TOPIC, "group": "now", "type": kind}
        assert value(samples, "eventbus_published_total", topic=TOPIC, type=kind, outcome="ok") == 5
        assert value(samples, "eventbus_publish_duration_seconds_count", topic=TOPIC) == 1
        assert value(samples, "eventbus_handled_total", outcome="success", **now_labels) == 4
        assert value(samples, "eventbus_handled_total", outcome="dead_lettered", **now_labels) == 1
        assert value(samples, "eventbus_retried_total", **now_labels) == 2  # n=3, n=4
        assert value(samples, "eventbus_failed_total", **now_labels) == 3  # 3 once, 4 twice
        assert value(samples, "eventbus_redelivered_total", **now_labels) == 0
        assert value(samples, "eventbus_handler_duration_seconds_count", **now_labels) == 5
        assert (
            value(samples, "eventbus_handler_duration_seconds_bucket", le="+Inf", **now_labels) == 5
        )
        later_labels = {"topic": TOPIC, "group": "later", "type": kind}
        assert value(samples, "eventbus_handled_total", outcome="redelivery", **later_labels) == 1
        assert (
            value(samples, "eventbus_handled_total", outcome="dead_lettered", **later_labels) == 1
        )
        assert value(samples, "eventbus_redelivered_total", **later_labels) == 1
        assert value(samples, "eventbus_failed_total", **later_labels) == 2
        assert value(samples, "eventbus_retried_total", **later_labels) == 0
        assert value(samples, "eventbus_in_flight", topic=TOPIC, group="now") == 0

    run(scenario)


def test_labels_stay_bounded() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        url = memory_url()
        bus = Metrics(registry=registry, max_topics=1).instrument(EventBus(url, source="m"))
        seen = Collector[str]()
        topic = f"anything-{uuid.uuid4()}"

        @bus.subscribe(topic, group="tap")
        async def tap(envelope: Envelope) -> None:
            seen.add(envelope.type)

        async with bus:
            for n in range(3):
                stranger = Envelope.create(type=f"stranger.{n}.{uuid.uuid4()}", source="x")
                await bus.publish_envelopes(topic, [stranger])
            await bus.publish_envelopes(
                f"third-{uuid.uuid4()}", [Envelope.create(type="x", source="x")]
            )
            await seen.wait_count(3)
            samples = scrape(registry)
        assert (
            value(
                samples,
                "eventbus_handled_total",
                topic=topic,
                group="tap",
                type="other",
                outcome="success",
            )
            == 3
        )
        assert (
            value(samples, "eventbus_published_total", topic=topic, type="other", outcome="ok") == 3
        )
        # Past max_topics distinct topics, the topic label is "other".
        assert (
            value(samples, "eventbus_published_total", topic="other", type="other", outcome="ok")
            == 1
        )
        types = {dict(labels).get("type") for _, labels in samples}
        assert types <= {None, "other"}

    run(scenario)


def test_each_single_publish_is_counted_by_its_type() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        bus = Metrics(registry=registry).instrument(EventBus(memory_url(), source="m"))
        async with bus:
            for n in range(2):
                await bus.publish(Booked(n=n))
            await bus.publish_envelopes(TOPIC, [Envelope.create(type="x.unknown", source="x")])
        samples = scrape(registry)
        kind = Booked.event_type()
        assert value(samples, "eventbus_published_total", topic=TOPIC, type=kind, outcome="ok") == 2
        assert (
            value(samples, "eventbus_published_total", topic=TOPIC, type="other", outcome="ok") == 1
        )
        assert value(samples, "eventbus_publish_duration_seconds_count", topic=TOPIC) == 3

    run(scenario)


def test_gauges_follow_the_running_bus() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        bus = Metrics(registry=registry, sample_every=0.05).instrument(
            EventBus(memory_url(), source="m", prefetch_per_worker=4)
        )
        release = asyncio.Event()
        started = Collector[int]()

        @bus.subscribe(Booked, group="g", concurrency=2)
        async def slow(event: Booked) -> None:
            started.add(event.n)
            await release.wait()

        labels = {"topic": TOPIC, "group": "g"}
        async with bus:
            await bus.publish_many([Booked(n=n) for n in range(20)])
            await started.wait_count(2)
            # Sampled once the lanes took their prefetch (a sample between the publish
            # and the first fetch sees a lag of 20 and nothing held).
            await until(lambda: value(scrape(registry), "eventbus_prefetch_in_use", **labels) == 8)
            samples = scrape(registry)
            assert value(samples, "eventbus_in_flight", **labels) == 2
            assert value(samples, "eventbus_prefetch_limit", **labels) == 8
            assert value(samples, "eventbus_consumer_lag", **labels) == 12
            release.set()
            await started.wait_count(20)
            await until(
                lambda: (
                    value(scrape(registry), "eventbus_consumer_lag", **labels) == 0
                    and value(scrape(registry), "eventbus_prefetch_in_use", **labels) == 0
                )
            )
        # A stopped bus reports no lag or prefetch any more.
        assert ("eventbus_consumer_lag", frozenset(labels.items())) not in scrape(registry)

    run(scenario)


def test_undecodable_messages_count_as_dead_letters() -> None:
    async def scenario() -> None:
        registry = CollectorRegistry()
        bus = Metrics(registry=registry).instrument(EventBus(memory_url(), source="m"))

        @bus.subscribe(Booked, group="g")
        async def handle(event: Booked) -> None: ...

        async with bus:
            await bus.adapter.publish_raw(TOPIC, RawMessage(b"\x00 not json", {}))
            await until(
                lambda: (
                    value(
                        scrape(registry),
                        "eventbus_dead_lettered_total",
                        topic=TOPIC,
                        group="g",
                        type="other",
                    )
                    == 1
                )
            )

    run(scenario)


def test_two_metrics_on_one_registry_share_it() -> None:
    registry = CollectorRegistry()
    first, second = Metrics(registry=registry), Metrics(registry=registry)
    assert first.store is second.store


def test_the_same_figures_reach_an_opentelemetry_meter() -> None:
    async def scenario() -> None:
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        bus = Metrics(registry=None, meter_provider=provider).instrument(
            EventBus(memory_url(), source="m")
        )
        done = Collector[int]()

        @bus.subscribe(Booked, group="g")
        async def handle(event: Booked) -> None:
            done.add(event.n)

        async with bus:
            await bus.publish_many([Booked(n=n) for n in range(3)])
            await done.wait_count(3)
            await until(lambda: _otel(reader).get(("eventbus.handled", "success"), 0) == 3)
        figures = _otel(reader)
        assert figures[("eventbus.published", "ok")] == 3
        assert figures[("eventbus.handler.duration", None)] == 3  # a histogram's count
        assert figures[("eventbus.publish.duration", None)] == 1

    run(scenario)


def _otel(reader: InMemoryMetricReader) -> dict[tuple[str, str | None], float]:
    found: dict[tuple[str, str | None], float] = {}
    data = reader.get_metrics_data()
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    outcome = (point.attributes or {}).get("outcome")
                    number: Any = getattr(point, "value", None) or getattr(point, "count", 0)
                    key = (metric.name, str(outcome) if outcome is not None else None)
                    found[key] = found.get(key, 0) + float(number)
    return found
