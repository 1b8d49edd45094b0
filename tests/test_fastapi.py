"""eventbus.fastapi: the lifespan starts the bus before the app's own and stops it after;
a route without it gets a clear error; the request's trace context is current in the
route, so with eventbus.tracing (the OpenTelemetry SDK, spans kept in memory) one trace
goes from the caller through the route's publish to the handler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Request
from opentelemetry import context, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from eventbus import Context, EventBus
from eventbus.errors import ConfigurationError
from eventbus.fastapi import BusDep, TraceContextMiddleware, bus_lifespan
from eventbus.tracing import Tracing
from tests.bus_support import OrderPlaced, memory_url, run, until

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN_ID}-01"


def traced_bus() -> tuple[EventBus, TracerProvider, InMemorySpanExporter]:
    """A memory bus traced by eventbus.tracing into an SDK provider's in-memory exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(tracer_provider=provider).instrument(EventBus(memory_url())), provider, exporter


def hex_ids(span: ReadableSpan) -> tuple[str, str, str | None]:
    """(trace id, span id, parent span id) as the W3C header writes them."""
    assert span.context is not None
    parent = None if span.parent is None else format(span.parent.span_id, "016x")
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x"), parent


def orders_app(bus: EventBus, **kwargs: Any) -> FastAPI:
    app = FastAPI(lifespan=bus_lifespan(bus, **kwargs))
    app.add_middleware(TraceContextMiddleware)
    seen: dict[str, Any] = {}
    app.state.seen = seen

    @app.post("/orders/{order_id}")
    async def place(order_id: str, bus: BusDep, request: Request) -> dict[str, str | None]:
        seen["trace_id"] = format(trace.get_current_span().get_span_context().trace_id, "032x")
        seen["state"] = getattr(request.state, "greeting", None)
        sent = await bus.publish(OrderPlaced(order_id=order_id))
        return {"traceparent": sent.traceparent}

    return app


async def post(app: FastAPI, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with LifespanManager(app) as running:
        transport = httpx.ASGITransport(app=running.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.post(path, headers=headers)


def test_one_trace_goes_from_the_caller_through_the_route_to_the_handler() -> None:
    async def scenario() -> None:
        bus, _, exporter = traced_bus()
        handled = asyncio.Event()
        in_handler: dict[str, str] = {}

        @bus.subscribe(OrderPlaced, group="fulfilment")
        async def fulfil(event: OrderPlaced, ctx: Context) -> None:
            in_handler["trace_id"] = format(
                trace.get_current_span().get_span_context().trace_id, "032x"
            )
            handled.set()

        app = orders_app(bus)
        async with LifespanManager(app) as running:
            transport = httpx.ASGITransport(app=running.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                answer = await http.post("/orders/o-1", headers={"traceparent": TRACEPARENT})
            await asyncio.wait_for(handled.wait(), 10)
            await until(
                lambda: any(s.name.startswith("process") for s in exporter.get_finished_spans())
            )
        assert answer.status_code == 200, answer.text
        assert app.state.seen["trace_id"] == TRACE_ID  # the route ran in the caller's trace
        (send,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER]
        (process,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CONSUMER]
        send_trace, send_id, send_parent = hex_ids(send)
        process_trace, _, process_parent = hex_ids(process)
        assert (send_trace, send_parent) == (TRACE_ID, CALLER_SPAN_ID)
        assert (process_trace, process_parent) == (TRACE_ID, send_id)
        assert answer.json()["traceparent"].startswith(f"00-{TRACE_ID}-{send_id}-")
        assert in_handler["trace_id"] == TRACE_ID
        assert send.name == "send test-bus-orders" and process.name == "process test-bus-orders"
        assert process.attributes is not None
        assert process.attributes["messaging.consumer.group.name"] == "fulfilment"

    run(scenario)


def test_without_a_traceparent_the_publish_starts_a_trace() -> None:
    async def scenario() -> None:
        bus, _, exporter = traced_bus()
        answer = await post(orders_app(bus), "/orders/o-2")
        (send,) = exporter.get_finished_spans()
        trace_id, send_id, parent = hex_ids(send)
        assert parent is None and trace_id != TRACE_ID
        assert answer.json()["traceparent"].startswith(f"00-{trace_id}-{send_id}-")

    run(scenario)


def test_a_span_already_current_is_left_to_the_instrumentation() -> None:
    """An instrumentation's server span (here: an outer middleware's) stays current: the
    publish is its child, not the header's."""

    async def scenario() -> None:
        bus, provider, exporter = traced_bus()
        app = orders_app(bus)
        inner = app.build_middleware_stack()
        server_span: dict[str, str] = {}

        async def instrumented(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            with provider.get_tracer("test").start_as_current_span("POST /orders") as span:
                server_span["trace_id"] = format(span.get_span_context().trace_id, "032x")
                server_span["span_id"] = format(span.get_span_context().span_id, "016x")
                await inner(scope, receive, send)

        app.build_middleware_stack = lambda: instrumented  # type: ignore[method-assign]
        answer = await post(app, "/orders/o-3", {"traceparent": TRACEPARENT})
        assert app.state.seen["trace_id"] == server_span["trace_id"] != TRACE_ID
        (send,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.PRODUCER]
        trace_id, send_id, parent = hex_ids(send)
        assert (trace_id, parent) == (server_span["trace_id"], server_span["span_id"])
        assert answer.json()["traceparent"].startswith(f"00-{trace_id}-{send_id}-")

    run(scenario)


def test_the_apps_own_lifespan_runs_inside_with_the_bus_started() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url())
        order: list[str] = []

        @asynccontextmanager
        async def own(app: FastAPI) -> AsyncIterator[dict[str, str]]:
            order.append(f"own starts, bus ok={(await bus.health()).ok}")
            yield {"greeting": "hello"}
            order.append(f"own stops, bus ok={(await bus.health()).ok}")

        app = orders_app(bus, also=own)
        answer = await post(app, "/orders/o-4")
        assert answer.status_code == 200
        assert app.state.seen["state"] == "hello"
        assert order == ["own starts, bus ok=True", "own stops, bus ok=True"]
        assert not (await bus.health()).ok

    run(scenario)


def test_a_route_of_an_app_without_the_lifespan_is_told_what_to_do() -> None:
    async def scenario() -> None:
        app = FastAPI()

        @app.get("/x")
        async def x(bus: BusDep) -> None:
            pass

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            with pytest.raises(ConfigurationError, match=r"FastAPI\(lifespan=bus_lifespan"):
                await http.get("/x")

    run(scenario)


def test_the_middleware_detaches_the_context_after_the_request() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url())
        before = context.get_current()
        await post(orders_app(bus), "/orders/o-5", {"traceparent": TRACEPARENT})
        assert context.get_current() == before

    run(scenario)
