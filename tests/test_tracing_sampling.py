"""Tracing's cheap paths for traces nobody records: a publish that starts a trace asks
the sampler before any span is made, and must still give a recorded trace exactly the
span the SDK would; a message in an unsampled trace gets no span and hands the trace
on unchanged to what its handler publishes."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
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


class Listed:
    """An id generator giving the trace ids listed, in turn (span ids: counted)."""

    def __init__(self, trace_ids: list[int]) -> None:
        self.trace_ids = iter(trace_ids)
        self.span_ids = iter(range(1, 1 << 62))

    def generate_trace_id(self) -> int:
        return next(self.trace_ids)

    def generate_span_id(self) -> int:
        return next(self.span_ids)

    def is_trace_id_random(self) -> bool:
        return True


@pytest.mark.parametrize(
    "make",
    [
        lambda rate: sampling.ParentBased(sampling.TraceIdRatioBased(rate)),
        sampling.ParentBasedTraceIdRatio,
        sampling.TraceIdRatioBased,
    ],
    ids=["ParentBased(TraceIdRatioBased)", "ParentBasedTraceIdRatio", "TraceIdRatioBased"],
)
@pytest.mark.parametrize("rate", [0.0, 0.01, 0.5, 1.0])
def test_the_sdk_ratio_sampler_is_answered_as_it_answers(make: Any, rate: float) -> None:
    """For exactly the SDK's ratio samplers a new trace's decision is read from its
    id's low bits without asking the sampler: the same decision for every id, those
    at the bound and with any high bits included."""
    import random

    from eventbus.tracing import _RootSampling

    sampler = make(rate)
    bound = sampling.TraceIdRatioBased(rate).bound
    rng = random.Random(22)
    low = [0, 1, bound - 1, bound, bound + 1, (1 << 64) - 1] + [
        rng.getrandbits(64) for _ in range(300)
    ]
    trace_ids = [
        (high << 64) | (value & ((1 << 64) - 1))
        for value in low
        for high in (0, 1, rng.getrandbits(64))
        if (high << 64) | (value & ((1 << 64) - 1))
    ]
    provider = TracerProvider(sampler=sampler, id_generator=Listed(trace_ids))
    roots = _RootSampling.of(provider.get_tracer("test"))
    assert roots is not None and roots.bound == bound  # the fast path is taken
    for trace_id in trace_ids:
        expected = sampler.should_sample(OtelContext(), trace_id, "send t", SpanKind.PRODUCER)
        dropped = roots.dropped("t", lambda topic: {})
        if expected.decision.is_sampled():
            assert dropped is None, f"{trace_id:032x} is sampled at {rate}"
            assert roots.ids.generate_trace_id() == trace_id  # handed to start_span
        else:
            assert dropped is not None, f"{trace_id:032x} is dropped at {rate}"
            assert dropped[0][3:35] == f"{trace_id:032x}" and not sampled(dropped[0])
            assert dropped[1] is None  # a new trace has no trace state


def test_another_sampler_is_asked_as_ever() -> None:
    from eventbus.tracing import _RootSampling

    class Mine(sampling.TraceIdRatioBased):
        pass

    for sampler in (Mine(0.5), sampling.ParentBased(Mine(0.5)), EvenTraces()):
        roots = _RootSampling.of(TracerProvider(sampler=sampler).get_tracer("test"))
        assert roots is not None and roots.bound is None


def test_the_sdk_random_ids_are_drawn_as_its_generator_draws_them() -> None:
    """With exactly the SDK's RandomIdGenerator, ``random.getrandbits`` is asked
    directly: the same ids, in the same order, as the generator gives, and the
    traceparent written with them."""
    import random

    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    from eventbus.tracing import _RootSampling

    sampler = sampling.ParentBased(sampling.TraceIdRatioBased(0.5))
    provider = TracerProvider(sampler=sampler)
    roots = _RootSampling.of(provider.get_tracer("test"))
    assert roots is not None and roots.random_bits is not None  # the direct path
    random.seed(22)
    got, handed = [], []
    for _ in range(200):
        got.append(roots.dropped("t", lambda topic: {}))
        if got[-1] is None:  # recorded: start_span takes the two ids handed to it
            handed.append((roots.ids.generate_trace_id(), roots.ids.generate_span_id()))
    random.seed(22)
    ids = RandomIdGenerator()
    for answer in got:
        trace_id = ids.generate_trace_id()
        if sampler.should_sample(OtelContext(), trace_id, "send t").decision.is_sampled():
            # start_span draws the span's id right after the trace's
            assert answer is None and handed.pop(0) == (trace_id, ids.generate_span_id())
        else:
            assert answer == (f"00-{trace_id:032x}-{ids.generate_span_id():016x}-02", None)
    assert not handed and {answer is None for answer in got} == {True, False}


def test_a_dropped_new_trace_is_built_into_the_envelopes_not_copied_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Outside any span, a publish's new trace is decided before its envelopes are
    built: a dropped one is built in (no envelope copied to carry it, no traceparent
    parsed on the way, no coroutine of the publish step's own), one trace per publish
    call, each as the sampler decided."""
    import eventbus.tracing as tracing_module

    calls: Counter[str] = Counter()
    for name in ("_stamped", "_span_context"):
        original = getattr(tracing_module, name)

        def counted(*args: Any, _name: str = name, _original: Any = original) -> Any:
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(tracing_module, name, counted)
    send = tracing_module.SendSpans._send

    def sending(*args: Any) -> Any:
        calls["_send"] += 1
        return send(*args)

    monkeypatch.setattr(tracing_module.SendSpans, "_send", sending)

    async def scenario() -> None:
        exporter = InMemorySpanExporter()
        sampler = sampling.ParentBased(sampling.TraceIdRatioBased(0.5))
        provider = TracerProvider(sampler=sampler)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        bus = Tracing(provider).instrument(EventBus(memory_url(), source="orders"))
        async with bus:
            lone = [await bus.publish(Placed(n=n)) for n in range(40)]
            many = [await bus.publish_many([Placed(n=n), Placed(n=-n)]) for n in range(20)]
        recorded = {span.context.trace_id for span in exporter.get_finished_spans()}
        dropped = 0
        for sent in [[envelope] for envelope in lone] + many:
            assert len({e.traceparent for e in sent}) == 1  # one trace per call
            traceparent = sent[0].traceparent
            assert traceparent is not None
            trace_id = int(traceparent[3:35], 16)
            decision = sampler.should_sample(OtelContext(), trace_id, "send").decision
            assert sampled(traceparent) == decision.is_sampled() == (trace_id in recorded)
            dropped += not decision.is_sampled()
        assert 0 < dropped < 60
        assert calls["_stamped"] == len(recorded)  # only a recorded span's context is stamped
        assert calls["_send"] == len(recorded)  # a dropped one is passed on by __call__
        assert calls["_span_context"] == 0

    run(scenario)


def test_a_dropped_new_trace_published_again_inside_a_span_joins_that_span() -> None:
    """The publish step is passed over only while it would do nothing: an envelope
    built carrying a new trace the sampler dropped, published again inside a recorded
    span, gets a ``send`` span, a child of that span, and carries its context."""

    async def scenario() -> None:
        exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=sampling.ParentBased(sampling.TraceIdRatioBased(0.0)))
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        bus = Tracing(provider).instrument(EventBus(memory_url(), source="orders"))
        requests = TracerProvider().get_tracer("test")  # samples every trace
        async with bus:
            first = await bus.publish(Placed(n=1))  # a new trace, dropped: no span
            with requests.start_as_current_span("request") as request:
                (again,) = await bus.publish_envelopes(Placed.default_topic(), [first])
        assert first.traceparent is not None and not sampled(first.traceparent)
        parent = request.get_span_context()
        (send,) = exporter.get_finished_spans()
        assert send.name == f"send {Placed.default_topic()}"
        assert send.parent is not None and send.parent.span_id == parent.span_id
        assert send.context is not None and send.context.trace_id == parent.trace_id
        assert again.traceparent is not None and sampled(again.traceparent)
        assert again.traceparent[:53] == f"00-{parent.trace_id:032x}-{send.context.span_id:016x}-"

    run(scenario)


@pytest.mark.parametrize("traceparent", [None, "00-" + "3" * 32 + "-" + "4" * 16 + "-00"])
def test_a_handling_leaves_the_context_as_it_found_it(traceparent: str | None) -> None:
    """The consumer step makes the message's context current (set on OpenTelemetry's
    context variable directly) and puts the one before back when the handling ends."""
    from types import SimpleNamespace

    from opentelemetry import context as otel_context

    from eventbus.tracing import ProcessSpans

    steps = ProcessSpans(Tracing(TracerProvider(sampler=sampling.ALWAYS_OFF)), "memory")
    envelope = Envelope.create(type="t", source="s", traceparent=traceparent)
    ctx: Any = SimpleNamespace(envelope=envelope, topic="t", group="g")
    before = otel_context.get_current()
    for _ in range(2):  # the second time from what the step read last
        mark = steps.begin(ctx)
        inside = trace.get_current_span().get_span_context()
        assert inside.is_valid and not inside.trace_flags.sampled
        if traceparent is not None:
            assert f"{inside.trace_id:032x}" == traceparent[3:35]
        steps.end(ctx, mark, None)
        assert otel_context.get_current() is before


def test_a_tracer_its_provider_turns_off_writes_no_new_trace() -> None:
    """The SDK's tracer configurator may turn the tracer off (and on) while the bus
    runs: a new trace is then neither decided nor written, as ``start_span`` would."""
    from opentelemetry.sdk.trace import _default_tracer_configurator, _disable_tracer_configurator

    async def scenario() -> None:
        provider = TracerProvider(sampler=sampling.ParentBased(sampling.TraceIdRatioBased(0.0)))
        tracing = Tracing(provider)
        assert tracing.roots is not None and tracing.roots.configured is not None  # read
        bus = tracing.instrument(EventBus(memory_url(), source="orders"))
        async with bus:
            before = await bus.publish(Placed(n=1))
            provider._set_tracer_configurator(tracer_configurator=_disable_tracer_configurator)
            off = await bus.publish(Placed(n=2))
            provider._set_tracer_configurator(tracer_configurator=_default_tracer_configurator)
            after = await bus.publish(Placed(n=3))
        assert before.traceparent is not None and not sampled(before.traceparent)
        assert off.traceparent is None
        assert after.traceparent is not None and not sampled(after.traceparent)

    run(scenario)
