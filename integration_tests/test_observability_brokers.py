"""Tracing and metrics on real brokers: one trace publish -> handle -> publish -> handle
between two services, with the right parent/child links and messaging attributes,
and the metrics of a run with a success, a retry and a dead letter."""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import Callable

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from eventbus import Context, Event, EventBus, RetryPolicy
from eventbus.metrics import Metrics
from eventbus.tracing import Tracing
from integration_tests import harness

WAIT = 30.0
SYSTEMS = {
    "redis": "redis",
    "rabbitmq": "rabbitmq",
    "nats": "nats",
    "kafka": "kafka",
    "sqs": "aws_sqs",
}


class Reserved(Event, type="it.observability.reserved", topic="it-observability-reserved"):
    n: int


class Shipped(Event, type="it.observability.shipped", topic="it-observability-shipped"):
    n: int


def _url(endpoint: harness.Endpoint) -> str:
    if endpoint.name == "sqs":
        # The emulator takes any credentials (as integration_tests/sqs does); short polls.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        return f"{endpoint.url}&wait_seconds=1"
    # Streams, not Pub/Sub: a retry and a dead letter need redelivery.
    return endpoint.url.replace("redis://", "redis+streams://", 1)


async def _until(predicate: Callable[[], bool], what: str) -> None:
    async def poll() -> None:
        while not predicate():  # noqa: ASYNC110 - spans and scrapes signal no event
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), WAIT)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def _metrics(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.mark.parametrize(
    "broker_endpoint", ["redis", "rabbitmq", "nats", "kafka", "sqs"], indirect=True
)
def test_one_trace_and_the_metrics_across_a_real_broker(broker_endpoint: harness.Endpoint) -> None:
    asyncio.run(_scenario(broker_endpoint))


async def _scenario(endpoint: harness.Endpoint) -> None:
    run = uuid.uuid4().hex[:8]
    reserved, shipped = f"it-obs-reserved-{run}", f"it-obs-shipped-{run}"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(tracer_provider=provider)
    registry = CollectorRegistry()
    metrics = Metrics(registry=registry)
    retry = RetryPolicy(max_attempts=2, in_process_attempts=2, initial_delay=0.0, jitter=0.0)
    url = _url(endpoint)
    stock = metrics.instrument(tracing.instrument(EventBus(url, source="stock", retry=retry)))
    shipping = metrics.instrument(tracing.instrument(EventBus(url, source="shipping", retry=retry)))
    runs: dict[int, int] = {}
    delivered: list[Context] = []

    @shipping.subscribe(reserved, group=f"shipping-{run}")
    async def ship(event: Reserved, ctx: Context) -> None:
        runs[event.n] = runs.get(event.n, 0) + 1
        if event.n == 2 and runs[2] == 1:
            raise ValueError("the label printer jammed")
        if event.n == 3:
            raise ValueError("no such address")
        await ctx.publish(Shipped(n=event.n), topic=shipped)

    @stock.subscribe(shipped, group=f"stock-{run}")
    async def shipped_seen(event: Shipped, ctx: Context) -> None:
        delivered.append(ctx)

    async with stock, shipping:
        for n in (1, 2, 3):
            await stock.publish(Reserved(n=n), topic=reserved)
        await _until(lambda: len(delivered) == 2, "both shipments")
        group = f"shipping-{run}"

        def dead_lettered() -> float:
            return _metrics(registry).get(
                (
                    "eventbus_dead_lettered_total",
                    frozenset(
                        {"topic": reserved, "group": group, "type": Reserved.event_type()}.items()
                    ),
                ),
                0,
            )

        await _until(lambda: dead_lettered() == 1, "the dead letter's count")
        await _until(lambda: len(exporter.get_finished_spans()) == 10, "ten spans")

    spans = exporter.get_finished_spans()
    first = next(ctx for ctx in delivered if isinstance(ctx.event, Shipped) and ctx.event.n == 1)
    assert first.envelope.traceparent is not None
    trace_id = int(first.envelope.traceparent[3:35], 16)
    chain = sorted(
        (s for s in spans if s.context.trace_id == trace_id), key=lambda s: s.start_time or 0
    )
    assert [(s.name, s.kind) for s in chain] == [
        (f"send {reserved}", SpanKind.PRODUCER),
        (f"process {reserved}", SpanKind.CONSUMER),
        (f"send {shipped}", SpanKind.PRODUCER),
        (f"process {shipped}", SpanKind.CONSUMER),
    ]
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None and child.parent.span_id == parent.context.span_id
    system = SYSTEMS[endpoint.name]
    process = dict(chain[1].attributes or {})
    assert process["messaging.system"] == system
    assert process["messaging.destination.name"] == reserved
    assert process["messaging.consumer.group.name"] == group
    assert process["messaging.operation.type"] == "process"
    assert process["messaging.message.id"] == first.envelope.causationid
    assert dict(chain[2].attributes or {})["messaging.message.id"] == first.envelope.id
    _check_failures(spans, reserved)
    _check_metrics(_metrics(registry), reserved, shipped, group)


def _check_failures(spans: tuple[ReadableSpan, ...], reserved: str) -> None:
    processed = [s for s in spans if s.name == f"process {reserved}"]
    events = {tuple(e.name for e in s.events) for s in processed}
    assert events == {(), ("eventbus.retry",), ("eventbus.retry", "eventbus.dead_letter")}
    dead = next(s for s in processed if any(e.name == "eventbus.dead_letter" for e in s.events))
    assert dead.status.status_code == StatusCode.ERROR
    assert (
        dict(dead.events[-1].attributes or {})["eventbus.reason"] == "ValueError: no such address"
    )


def _check_metrics(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
    reserved: str,
    shipped: str,
    group: str,
) -> None:
    def value(name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    kind = Reserved.event_type()
    labels = {"topic": reserved, "group": group, "type": kind}
    assert value("eventbus_published_total", topic=reserved, type=kind, outcome="ok") == 3
    assert (
        value("eventbus_published_total", topic=shipped, type=Shipped.event_type(), outcome="ok")
        == 2
    )
    assert value("eventbus_handled_total", outcome="success", **labels) == 2
    assert value("eventbus_handled_total", outcome="dead_lettered", **labels) == 1
    assert value("eventbus_retried_total", **labels) == 2
    assert value("eventbus_failed_total", **labels) == 3
    assert value("eventbus_dead_lettered_total", **labels) == 1
    assert value("eventbus_handler_duration_seconds_count", **labels) == 3
