"""OpenTelemetry tracing on the memory broker, checked with the SDK's in-memory exporter:
one trace from the first publish through every handler and what it publishes, with
the messaging conventions' attributes; retries, the redelivery and the dead letter
as span events; batches, request/reply, sampling decisions kept."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON
from opentelemetry.trace import SpanKind, StatusCode

from eventbus import BatchItemFailed, Command, Context, Event, EventBus, RetryPolicy
from eventbus.tracing import Tracing
from tests.bus_support import Collector, memory_url, run, until


class Ordered(Event, type="test.tracing.ordered", topic="test-tracing-orders"):
    n: int


class Paid(Event, type="test.tracing.paid", topic="test-tracing-payments"):
    n: int


class Quote(Command, type="test.tracing.quote", topic="test-tracing-quotes"):
    n: int


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


def tracing_to(exporter: InMemorySpanExporter, **options: object) -> Tracing:
    provider = TracerProvider(**options)  # type: ignore[arg-type]
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(tracer_provider=provider)


def spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_one_trace_crosses_publish_handle_publish_handle(exporter: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        tracing = tracing_to(exporter)
        url = memory_url()
        orders = tracing.instrument(EventBus(url, source="orders"))
        billing = tracing.instrument(EventBus(url, source="billing"))
        done = Collector[Context]()

        @billing.subscribe(Ordered, group="billing")
        async def charge(event: Ordered, ctx: Context) -> None:
            await ctx.publish(Paid(n=event.n))

        @orders.subscribe(Paid, group="orders")
        async def paid(event: Paid, ctx: Context) -> None:
            done.add(ctx)

        async with orders, billing:
            sent = await orders.publish(Ordered(n=1))
            [last] = await done.wait_count(1)
            await until(lambda: len(exporter.get_finished_spans()) == 4)

        [send1] = spans(exporter, "send test-tracing-orders")
        [process1] = spans(exporter, "process test-tracing-orders")
        [send2] = spans(exporter, "send test-tracing-payments")
        [process2] = spans(exporter, "process test-tracing-payments")
        assert {s.context.trace_id for s in (send1, process1, send2, process2)} == {
            send1.context.trace_id
        }
        assert send1.parent is None  # published outside any span: the trace starts here
        assert parent_id(process1) == send1.context.span_id
        assert parent_id(send2) == process1.context.span_id
        assert parent_id(process2) == send2.context.span_id
        assert [s.kind for s in (send1, process1, send2, process2)] == [
            SpanKind.PRODUCER,
            SpanKind.CONSUMER,
            SpanKind.PRODUCER,
            SpanKind.CONSUMER,
        ]
        # The envelope carries the producer span's context, as the broker delivered it.
        assert sent.traceparent is not None
        assert (
            sent.traceparent[:52] == f"00-{send1.context.trace_id:032x}-"
            f"{send1.context.span_id:016x}"
        )
        assert int(sent.traceparent[53:], 16) & 1  # sampled
        assert last.envelope.traceparent is not None
        assert int(last.envelope.traceparent[36:52], 16) == send2.context.span_id
        assert dict(send1.attributes or {}) == {
            "messaging.system": "memory",
            "messaging.destination.name": "test-tracing-orders",
            "messaging.operation.type": "send",
            "messaging.operation.name": "publish",
            "messaging.message.id": sent.id,
            "eventbus.event.type": "test.tracing.ordered",
            "messaging.message.conversation_id": sent.correlationid,
        }
        attributes = dict(process1.attributes or {})
        assert attributes["messaging.system"] == "memory"
        assert attributes["messaging.destination.name"] == "test-tracing-orders"
        assert attributes["messaging.consumer.group.name"] == "billing"
        assert attributes["messaging.operation.type"] == "process"
        assert attributes["messaging.message.id"] == sent.id
        assert attributes["messaging.message.conversation_id"] == sent.correlationid
        assert attributes["eventbus.outcome"] == "success"
        assert process1.status.status_code == StatusCode.UNSET

    run(scenario)


def test_a_publish_inside_a_span_is_its_child(exporter: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        tracing = tracing_to(exporter)
        bus = tracing.instrument(EventBus(memory_url(), source="orders"))
        tracer = tracing.tracer
        async with bus:
            with tracer.start_as_current_span("http POST /orders") as request:
                await bus.publish_many([Ordered(n=1), Ordered(n=2)])
        [send] = spans(exporter, "send test-tracing-orders")
        assert parent_id(send) == request.get_span_context().span_id
        assert dict(send.attributes or {})["messaging.batch.message_count"] == 2
        assert "messaging.message.id" not in dict(send.attributes or {})

    run(scenario)


def test_retries_redelivery_and_dead_letter_are_span_events(exporter: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        tracing = tracing_to(exporter)
        url = memory_url()
        bus = tracing.instrument(
            EventBus(
                url,
                source="orders",
                retry=RetryPolicy(
                    max_attempts=3, in_process_attempts=2, initial_delay=0.0, jitter=0.0
                ),
            )
        )

        @bus.subscribe(Ordered, group="g")
        async def fail(event: Ordered) -> None:
            raise ValueError("card declined")

        async with bus:
            await bus.publish(Ordered(n=1))
            await until(lambda: len(spans(exporter, "process test-tracing-orders")) == 2)

        [send] = spans(exporter, "send test-tracing-orders")
        first, second = sorted(
            spans(exporter, "process test-tracing-orders"), key=lambda s: s.start_time or 0
        )
        assert parent_id(first) == parent_id(second) == send.context.span_id
        assert [(e.name, dict(e.attributes or {})["eventbus.attempt"]) for e in first.events] == [
            ("eventbus.retry", 1),
            ("eventbus.redelivery", 2),
        ]
        retry = dict(first.events[0].attributes or {})
        assert retry["eventbus.reason"] == "ValueError: card declined"
        assert retry["error.type"] == "ValueError" and retry["eventbus.delay_seconds"] == 0.0
        assert dict(first.attributes or {})["eventbus.outcome"] == "redelivery"
        assert first.status.status_code == StatusCode.ERROR
        [dead] = second.events
        assert dead.name == "eventbus.dead_letter"
        assert (
            dict(dead.attributes or {})["eventbus.dead_letter.topic"] == "test-tracing-orders.g.dlq"
        )
        assert dict(dead.attributes or {})["eventbus.reason"] == "ValueError: card declined"
        attributes = dict(second.attributes or {})
        assert attributes["eventbus.outcome"] == "dead_lettered"
        assert attributes["eventbus.delivery.attempt"] == 2
        assert attributes["error.type"] == "ValueError"
        assert second.status.status_code == StatusCode.ERROR

    run(scenario)


def test_a_batch_is_one_span_linked_to_each_message(exporter: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        tracing = tracing_to(exporter)
        bus = tracing.instrument(
            EventBus(memory_url(), source="orders", retry=RetryPolicy(max_attempts=2))
        )
        done = Collector[int]()

        @bus.subscribe(Ordered, group="g", batch=3, batch_timeout=0.2)
        async def store(events: list[Ordered]) -> None:
            if len(events) > 1:
                raise BatchItemFailed([2])
            done.add(events[0].n)

        async with bus:
            for n in range(3):  # three publishes: three producer spans, three traces
                await bus.publish(Ordered(n=n))
            await done.wait_count(1)
            await until(lambda: len(spans(exporter, "process test-tracing-orders")) == 2)

        sends = spans(exporter, "send test-tracing-orders")
        batch, alone = sorted(
            spans(exporter, "process test-tracing-orders"), key=lambda s: s.start_time or 0
        )
        assert dict(batch.attributes or {})["messaging.batch.message_count"] == 3
        assert dict(batch.attributes or {})["eventbus.batch.failed_count"] == 1
        assert {link.context.span_id for link in batch.links} == {s.context.span_id for s in sends}
        # The failed event is handled again on its own, in its producer's trace.
        assert alone.parent is not None and alone.parent.span_id in {
            s.context.span_id for s in sends
        }

    run(scenario)


def test_request_and_reply_are_one_trace(exporter: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        tracing = tracing_to(exporter)
        url = memory_url()
        client = tracing.instrument(EventBus(url, source="client"))
        server = tracing.instrument(EventBus(url, source="server"))

        @server.subscribe(Quote)
        async def quote(command: Quote) -> int:
            return command.n * 2

        async with client, server:
            with tracing.tracer.start_as_current_span("checkout") as checkout:
                assert await client.request(Quote(n=21), timeout=5) == 42
            await until(lambda: len(exporter.get_finished_spans()) >= 4)
        trace_id = checkout.get_span_context().trace_id
        [request] = spans(exporter, "send test-tracing-quotes")
        [process] = spans(exporter, "process test-tracing-quotes")
        [reply] = [s for s in exporter.get_finished_spans() if s.name.startswith("send replies-")]
        assert {request.context.trace_id, process.context.trace_id, reply.context.trace_id} == {
            trace_id
        }
        assert parent_id(request) == checkout.get_span_context().span_id
        assert parent_id(process) == request.context.span_id
        assert parent_id(reply) == process.context.span_id

    run(scenario)


def test_an_unsampled_trace_stays_unsampled(exporter: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        producer = tracing_to(InMemorySpanExporter(), sampler=ALWAYS_OFF)
        url = memory_url()
        orders = producer.instrument(EventBus(url, source="orders"))
        consumer_side = tracing_to(exporter, sampler=ALWAYS_ON)
        billing = consumer_side.instrument(EventBus(url, source="billing"))
        paid = Collector[Context]()

        @billing.subscribe(Ordered, group="billing")
        async def charge(event: Ordered, ctx: Context) -> None:
            assert trace.get_current_span().get_span_context().is_valid
            await ctx.publish(Paid(n=event.n))

        @billing.subscribe(Paid, group="billing")
        async def seen(event: Paid, ctx: Context) -> None:
            paid.add(ctx)

        async with orders, billing:
            sent = await orders.publish(Ordered(n=1))
            [ctx] = await paid.wait_count(1)
        assert sent.traceparent is not None and not int(sent.traceparent[53:], 16) & 1
        # Not sampled where it started: no span here either, and the trace goes on.
        assert exporter.get_finished_spans() == ()
        assert ctx.envelope.traceparent is not None
        assert ctx.envelope.traceparent[3:35] == sent.traceparent[3:35]

    run(scenario)


def test_the_sampler_may_be_asked_for_every_message(exporter: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        url = memory_url()
        orders = tracing_to(InMemorySpanExporter(), sampler=ALWAYS_OFF).instrument(
            EventBus(url, source="orders")
        )
        provider = TracerProvider(sampler=ALWAYS_ON)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        billing = Tracing(provider, respect_parent_sampling=False).instrument(
            EventBus(url, source="billing")
        )
        done = Collector[int]()

        @billing.subscribe(Ordered, group="billing")
        async def charge(event: Ordered) -> None:
            done.add(event.n)

        async with orders, billing:
            await orders.publish(Ordered(n=1))
            await done.wait_count(1)
            await until(lambda: len(exporter.get_finished_spans()) == 1)
        [process] = exporter.get_finished_spans()
        assert process.name == "process test-tracing-orders"

    run(scenario)


def test_without_an_sdk_nothing_is_stamped_and_handling_goes_on() -> None:
    async def scenario() -> None:
        bus = Tracing(trace.NoOpTracerProvider()).instrument(
            EventBus(memory_url(), source="orders")
        )
        done = Collector[Context]()

        @bus.subscribe(Ordered, group="g")
        async def handle(event: Ordered, ctx: Context) -> None:
            done.add(ctx)

        async with bus:
            sent = await bus.publish(Ordered(n=1))
            [ctx] = await done.wait_count(1)
        assert sent.traceparent is None and ctx.envelope.traceparent is None

    run(scenario)


@pytest.mark.parametrize(
    "traceparent",
    [
        "garbage",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
    ],
)
def test_a_malformed_traceparent_starts_a_new_trace(
    exporter: InMemorySpanExporter, traceparent: str
) -> None:
    async def scenario() -> None:
        tracing = tracing_to(exporter)
        bus = tracing.instrument(EventBus(memory_url(), source="orders"))
        done = Collector[int]()

        @bus.subscribe(Ordered, group="g")
        async def handle(event: Ordered) -> None:
            done.add(event.n)

        async with bus:
            envelope = bus.envelope_for(Ordered(n=1)).evolve(traceparent=traceparent)
            await bus.adapter.publish(Ordered.default_topic(), [envelope])  # no send span
            await done.wait_count(1)
            await until(lambda: len(exporter.get_finished_spans()) == 1)
        [process] = exporter.get_finished_spans()
        assert process.parent is None

    run(scenario)


def test_an_envelope_built_in_another_trace_is_linked(exporter: InMemorySpanExporter) -> None:
    async def scenario() -> None:
        tracing = tracing_to(exporter)
        bus = tracing.instrument(EventBus(memory_url(), source="sagas"))
        tracer = tracing.tracer
        async with bus:
            with tracer.start_as_current_span("saga step") as step:
                held = bus.envelope_for(Ordered(n=1)).evolve(
                    traceparent=f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
                )
            with tracer.start_as_current_span("saga tick") as tick:
                await bus.publish_envelopes(Ordered.default_topic(), [held])
        [send] = spans(exporter, "send test-tracing-orders")
        assert parent_id(send) == tick.get_span_context().span_id
        assert step.get_span_context().span_id != tick.get_span_context().span_id
        [link] = send.links
        assert held.traceparent is not None
        assert link.context.trace_id == int(held.traceparent[3:35], 16)

    run(scenario)


GLOBAL = """
import asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from eventbus import Event, EventBus
from eventbus.tracing import Tracing

class Ping(Event, type="global.ping", topic="global-pings"):
    n: int

async def main():
    bus = Tracing().instrument(EventBus("memory://global", source="g"))  # the global provider
    async with bus:
        before = await bus.publish(Ping(n=1))
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)  # what a service does at start-up
        after = await bus.publish(Ping(n=2))
    print(before.traceparent, after.traceparent is not None,
          [s.name for s in exporter.get_finished_spans()])

asyncio.run(main())
"""


def test_the_global_provider_is_used_once_the_service_sets_it() -> None:
    # In a process of its own: OpenTelemetry's global provider can be set only once.
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["None", "True", "['send", "global-pings']"]
