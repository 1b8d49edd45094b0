"""Under prometheus-client's multiprocess mode a custom collector is not seen (the scrape
reads the processes' files), so :class:`Metrics` copies its figures into the library's own
Counter, Histogram and Gauge objects: what they show after a flush is what the collector
shows, sample for sample, and a second flush adds only what happened since the first.
(Here on an ordinary registry; the multiprocess files themselves are tested through
``eventbus run --workers 2`` in tests/test_cli_metrics.py.)"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from eventbus import Event, EventBus, RetryPolicy
from eventbus.metrics import Metrics
from eventbus.metrics_multiprocess import MultiprocessMirror
from tests.bus_support import Collector, memory_url, run, until

TOPIC = "test-metrics-mirror"


class Booked(Event, type="test.metrics-mirror.booked", topic=TOPIC):
    n: int


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def without_created(samples: Samples) -> Samples:
    # prometheus-client's own objects add *_created outside multiprocess mode.
    return {key: v for key, v in samples.items() if not key[0].endswith("_created")}


def test_the_mirror_shows_what_the_collector_shows() -> None:
    async def scenario() -> None:
        collected, mirrored = CollectorRegistry(), CollectorRegistry()
        metrics = Metrics(registry=collected, sample_every=0.05)
        mirror = MultiprocessMirror(metrics.store, registry=mirrored)
        bus = metrics.instrument(
            EventBus(
                memory_url(),
                source="m",
                retry=RetryPolicy(max_attempts=2, initial_delay=0.0, jitter=0.0),
            )
        )
        done = Collector[int]()

        @bus.subscribe(Booked, group="g")
        async def handle(event: Booked) -> None:
            if event.n == 0:
                raise ValueError("always fails")
            done.add(event.n)

        labels = {"topic": TOPIC, "group": "g", "type": Booked.event_type()}
        async with bus:
            await bus.publish_many([Booked(n=n) for n in range(4)])
            await done.wait_count(3)
            await until(
                lambda: (
                    value(scrape(collected), "eventbus_dead_lettered_total", **labels) == 1
                    and ("eventbus_consumer_lag", frozenset({"topic": TOPIC, "group": "g"}.items()))
                    in scrape(collected)
                )
            )
            mirror.flush()
            assert without_created(scrape(mirrored)) == scrape(collected)
            await bus.publish_many([Booked(n=n) for n in range(4, 7)])
            await done.wait_count(6)
            mirror.flush()
            assert without_created(scrape(mirrored)) == scrape(collected)
        assert value(scrape(mirrored), "eventbus_handled_total", outcome="success", **labels) == 6
        assert value(scrape(mirrored), "eventbus_handler_duration_seconds_count", **labels) == 7

    run(scenario)
