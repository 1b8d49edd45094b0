"""Tracing's cheap paths for traces nobody records: a publish that starts a trace asks
the sampler before any span is made, and must still give a recorded trace exactly the
span the SDK would; a message in an unsampled trace gets no span and hands the trace
on unchanged to what its handler publishes."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context as OtelContext
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind
from opentelemetry.util.types import Attributes

from eventbus import Context, Envelope, Event, EventBus
from eventbus.tracing import Tracing
from tests.bus_support import Collector, memory_url, run


class Placed(Event, type="test.sampling.placed", topic="test-sampling-orders"):
    n: int


class Shipped(Event, type="test.sampling.shipped", topic="test-sampling-shipments"):
    n: int


class EvenTraces(sampling.Sampler):
    """Records the traces whose id is even (decided by the id, as the SDK's samplers
    are), and remembers every trace id it was asked about."""

    def __init__(self) -> None:
        self.asked: list[int] = []

    def should_sample(
        self,
        parent_context: OtelContext | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> sampling.SamplingResult:
        self.asked.append(trace_id)
        decision = sampling.Decision
        return sampling.SamplingResult(
            decision.RECORD_AND_SAMPLE if trace_id % 2 == 0 else decision.DROP
        )

    def get_description(self) -> str:
        return "EvenTraces"


def sampled(traceparent: str | None) -> bool:
    assert traceparent is not None
    return bool(int(traceparent[53:55], 16) & 1)


def test_a_new_trace_is_decided_once_and_a_recorded_one_keeps_its_id() -> None:
    async def scenario() -> None:
        exporter = InMemorySpanExporter()
        sampler = EvenTraces()
        provider = TracerProvider(sampler=sampler)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        bus = Tracing(provider).instrument(EventBus(memory_url(), source="orders"))
        async with bus:
            sent = [await bus.publish(Placed(n=n)) for n in range(40)]
        spans = exporter.get_finished_spans()
        # One trace per publish: a trace to record is asked about again by the SDK's
        # start_span, about the same trace id (with one of its own, the sampler would
        # decide twice and the sampling rate be squared).
        asked = Counter(sampler.asked)
        assert len(asked) == 40
        assert all(times == (2 if trace_id % 2 == 0 else 1) for trace_id, times in asked.items())
        recorded = {int(e.traceparent[3:35], 16) for e in sent if sampled(e.traceparent)}
        assert recorded == {trace_id for trace_id in sampler.asked if trace_id % 2 == 0}
        assert {span.context.trace_id for span in spans} == recorded
        assert all(span.kind == SpanKind.PRODUCER and span.parent is None for span in spans)
        for envelope in sent:  # dropped or not, every message carries its trace
            assert int(envelope.traceparent[3:35], 16) in sampler.asked

    run(scenario)


def test_an_unsampled_message_gets_no_span_and_hands_its_trace_on() -> None:
    async def scenario() -> None:
        url = memory_url()
        orders = Tracing(TracerProvider(sampler=sampling.ALWAYS_OFF)).instrument(
            EventBus(url, source="orders")
        )
        exporter = InMemorySpanExporter()
        # Records whatever starts a trace here, follows the parent's decision otherwise.
        provider = TracerProvider(sampler=sampling.ParentBased(EvenTraces()))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        shipping = Tracing(provider).instrument(EventBus(url, source="shipping"))
        shipped = Collector[Envelope]()
        current: list[SpanContext] = []

        @shipping.subscribe(Placed, group="shipping")
        async def ship(event: Placed, ctx: Context) -> None:
            current.append(trace.get_current_span().get_span_context())  # what others see
            shipped.add(await ctx.publish(Shipped(n=event.n)))  # as it went out

        async with orders, shipping:
            placed = [await orders.publish(Placed(n=n)) for n in range(6)]
            sent = await shipped.wait_count(6)
        assert exporter.get_finished_spans() == ()
        traces = {e.traceparent[3:35] for e in placed if e.traceparent is not None}
        assert len(traces) == 6 and not any(sampled(e.traceparent) for e in placed)
        # The handler ran in its message's trace: what it calls (not only what it
        # publishes) stays in that trace, unsampled.
        assert {f"{c.trace_id:032x}" for c in current} == traces
        assert not any(c.trace_flags.sampled for c in current)
        for envelope in sent:  # the same trace, still not sampled
            assert envelope.traceparent is not None and envelope.traceparent[3:35] in traces
            assert not sampled(envelope.traceparent)

    run(scenario)


def test_a_handed_over_trace_id_goes_to_the_thread_that_handed_it() -> None:
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    from eventbus.tracing import _HandedOver

    ids = _HandedOver(RandomIdGenerator())
    ids.hand(42)
    other: list[int] = []
    thread = threading.Thread(target=lambda: other.append(ids.generate_trace_id()))
    thread.start()
    thread.join()
    assert other != [42]  # a span another thread started meanwhile: a trace of its own
    assert ids.generate_trace_id() == 42
    assert ids.generate_trace_id() != 42  # once
