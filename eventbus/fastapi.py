"""The bus in a FastAPI (or Starlette) app: started and stopped with the app's lifespan,
handed to routes by a dependency, publishing with the request's trace context.

::

    from fastapi import FastAPI
    from eventbus.fastapi import BusDep, TraceContextMiddleware, bus_lifespan

    bus = EventBus.from_env(source="orders-api")
    app = FastAPI(lifespan=bus_lifespan(bus))
    app.add_middleware(TraceContextMiddleware)

    @app.post("/orders", status_code=202)
    async def place(order: NewOrder, bus: BusDep) -> dict[str, str]:
        sent = await bus.publish(OrderPlaced(order_id=order.id))
        return {"event_id": sent.id}

Needs ``pip install "eventbus[fastapi]"`` (FastAPI and opentelemetry-api).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any

try:
    from fastapi import Depends, Request
    from opentelemetry import context, propagate, trace
    from starlette.types import ASGIApp, Receive, Scope, Send
except ModuleNotFoundError as missing:  # the `fastapi` extra, not the library's
    raise ModuleNotFoundError(
        f"eventbus.fastapi needs FastAPI and opentelemetry-api ({missing.name} is missing): "
        'pip install "eventbus[fastapi]"',
        name=missing.name,
    ) from missing

from eventbus.bus import EventBus
from eventbus.errors import ConfigurationError

__all__ = ["BusDep", "TraceContextMiddleware", "bus_lifespan", "get_bus"]

STATE_KEY = "eventbus"
"""Where the lifespan puts the bus: the lifespan state (``request.state.eventbus``) and
``app.state.eventbus``."""

Lifespan = Callable[[Any], AbstractAsyncContextManager[Mapping[str, Any] | None]]


def bus_lifespan(
    bus: EventBus, also: Lifespan | None = None
) -> Callable[[Any], AbstractAsyncContextManager[dict[str, Any]]]:
    """A lifespan for ``FastAPI(lifespan=...)`` or ``Starlette(lifespan=...)`` that starts
    ``bus`` before the app serves and stops it (gracefully: in-flight handlers finish)
    after the last request. ``also`` is the app's own lifespan, run inside, with the bus
    already started; the state it yields is kept."""

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        state = getattr(app, "state", None)
        if state is not None:
            setattr(state, STATE_KEY, bus)  # for servers without lifespan state
        async with bus:
            if also is None:
                yield {STATE_KEY: bus}
                return
            async with also(app) as more:
                yield {**(more or {}), STATE_KEY: bus}

    return lifespan


def get_bus(request: Request) -> EventBus:
    """The dependency behind :data:`BusDep`: the bus :func:`bus_lifespan` started."""
    bus = getattr(request.state, STATE_KEY, None) or getattr(request.app.state, STATE_KEY, None)
    if not isinstance(bus, EventBus):
        raise ConfigurationError(
            f"route {request.url.path} asks for the EventBus, but this app's lifespan did not "
            "start one: create the app with FastAPI(lifespan=bus_lifespan(bus))"
        )
    return bus


BusDep = Annotated[EventBus, Depends(get_bus)]
"""A route parameter ``bus: BusDep`` receives the app's started bus."""


class TraceContextMiddleware:
    """Makes the request's W3C trace context (its ``traceparent``/``tracestate`` headers)
    the current OpenTelemetry context while the request is handled, so what a route
    publishes continues the caller's trace.

    Through opentelemetry-api alone (its global propagator, W3C trace context by default).
    With ``opentelemetry-instrumentation-fastapi`` (or ``-asgi``) installed the request
    already has a server span and this middleware leaves it as it is.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or trace.get_current_span().get_span_context().is_valid:
            await self.app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope.get("headers", ())
        }
        token = context.attach(propagate.extract(carrier))
        try:
            await self.app(scope, receive, send)
        finally:
            context.detach(token)
