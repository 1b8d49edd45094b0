"""The order saga demo, traced: one trace per order, every span of it reached from the
order's first publish, and ``--trace`` prints the trace ids."""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from eventbus.tracing import Tracing  # noqa: E402
from examples.order_saga import demo  # noqa: E402


def test_each_order_is_one_trace_from_its_first_publish() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lines: list[str] = []
    run = asyncio.run(
        demo.run_saga(
            f"memory://{uuid.uuid4()}",
            timeout=5.0,
            echo=lines.append,
            show_middleware=False,
            tracing=Tracing(provider),
        )
    )
    assert [demo.problems(flow) for flow in run.flows] == [[], []]
    traces = [flow.trace_ids for flow in run.flows]
    assert all(len(ids) == 1 for ids in traces) and traces[0] != traces[1]
    for flow, (trace_id,) in zip(run.flows, traces, strict=True):
        spans = [
            s
            for s in exporter.get_finished_spans()
            if s.context is not None and s.context.trace_id == int(trace_id, 16)
        ]
        roots = [s for s in spans if s.parent is None]
        assert [root.name for root in roots] == ["send orders"]
        ids = {s.context.span_id for s in spans if s.context is not None}
        assert all(s.parent.span_id in ids for s in spans if s.parent is not None)
        # Every event of the flow was published in it and handled in it.
        assert len([s for s in spans if s.name.startswith("send ")]) == len(flow.events)
        assert all(
            line.startswith(f"[trace {trace_id[:8]}]")
            for line in lines
            if flow.correlation_id[:8] in line
        )


def test_the_demo_prints_its_trace_ids(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--trace", "--timeout", "5"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("    trace ") == 2 and " spans" in printed
