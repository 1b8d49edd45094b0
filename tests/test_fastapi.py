"""eventbus.fastapi: the lifespan starts the bus before the app's own and stops it after;
a route without it gets a clear error; the request's trace context is current in the
route, so a publish there continues the caller's trace."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI, Request
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.trace import TracerProvider

from eventbus import Envelope, EventBus
from eventbus.errors import ConfigurationError
from eventbus.fastapi import BusDep, TraceContextMiddleware, bus_lifespan
from tests.bus_support import OrderPlaced, memory_url, run

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def inject_current_context(topic: str, envelopes: Sequence[Envelope],
                                 call_next: Any) -> None:
    """A stand-in for the tracing part's publish injection, through opentelemetry-api
    alone: the current context's traceparent/tracestate into each envelope."""
    stamped = []
    for envelope in envelopes:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        stamped.append(envelope.evolve(traceparent=carrier.get("traceparent"),
                                       tracestate=carrier.get("tracestate"))
                       if carrier else envelope)
    await call_next(topic, stamped)


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


async def post(app: FastAPI, path: str, headers: dict[str, str] | None = None
               ) -> httpx.Response:
    async with LifespanManager(app) as running:
        transport = httpx.ASGITransport(app=running.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.post(path, headers=headers)


def test_a_publish_in_a_route_continues_the_callers_trace() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url(), publish_middleware=[inject_current_context])
        app = orders_app(bus)
        answer = await post(app, "/orders/o-1", {"traceparent": TRACEPARENT})
        assert answer.status_code == 200, answer.text
        assert app.state.seen["trace_id"] == TRACE_ID
        traceparent = answer.json()["traceparent"]
        assert traceparent.split("-")[1] == TRACE_ID

    run(scenario)


def test_without_a_traceparent_there_is_no_trace_to_continue() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url(), publish_middleware=[inject_current_context])
        answer = await post(orders_app(bus), "/orders/o-2")
        assert answer.json() == {"traceparent": None}

    run(scenario)


def test_a_span_already_current_is_left_to_the_instrumentation() -> None:
    """An instrumentation's server span (here: an outer middleware's) stays current."""
    provider = TracerProvider()

    async def scenario() -> None:
        bus = EventBus(memory_url(), publish_middleware=[inject_current_context])
        app = orders_app(bus)
        inner = app.build_middleware_stack()
        server_span: dict[str, str] = {}

        async def instrumented(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await inner(scope, receive, send)
                return
            with provider.get_tracer("test").start_as_current_span("POST /orders") as span:
                server_span["trace_id"] = format(span.get_span_context().trace_id, "032x")
                await inner(scope, receive, send)

        app.build_middleware_stack = lambda: instrumented  # type: ignore[method-assign]
        answer = await post(app, "/orders/o-3", {"traceparent": TRACEPARENT})
        assert app.state.seen["trace_id"] == server_span["trace_id"] != TRACE_ID
        assert answer.json()["traceparent"].split("-")[1] == server_span["trace_id"]

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
