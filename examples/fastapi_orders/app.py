"""Orders API: an HTTP front publishing events, and the service's own read of them.

- ``POST /orders`` publishes ``OrderSubmitted`` (in the caller's trace, when it sends a
  ``traceparent``) and answers 202 with the event id;
- the same app's bus subscribes to ``OrderSubmitted`` and keeps each order's status,
  which ``GET /orders/{order_id}`` reads;
- ``GET /readyz`` is the bus's readiness (every subscription attached, broker answering).

Run it with ``uvicorn examples.fastapi_orders.app:app``; describe its events with
``eventbus asyncapi examples.fastapi_orders.app:bus``.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Response
from pydantic import BaseModel, ConfigDict

from eventbus import Event, EventBus
from eventbus.fastapi import BusDep, TraceContextMiddleware, bus_lifespan
from eventbus.probes import readiness


class OrderSubmitted(Event, type="example.api.order-submitted", topic="api-orders"):
    """A customer submitted an order through the API."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"order_id": "o-1", "customer_id": "c-9", "total_cents": 1250}]
        }
    )
    order_id: str
    customer_id: str
    total_cents: int


class NewOrder(BaseModel):
    order_id: str
    customer_id: str
    total_cents: int


statuses: dict[str, str] = {}
bus = EventBus.from_env(source="orders-api")
bus.publishes(OrderSubmitted)


@bus.subscribe(OrderSubmitted, group="orders-api-status")
async def record(event: OrderSubmitted) -> None:
    statuses[event.order_id] = "submitted"


app = FastAPI(title="Orders API", lifespan=bus_lifespan(bus))
app.add_middleware(TraceContextMiddleware)


@app.post("/orders", status_code=202)
async def submit(order: NewOrder, bus: BusDep) -> dict[str, str]:
    sent = await bus.publish(OrderSubmitted(**order.model_dump()), key=order.order_id)
    return {"event_id": sent.id}


@app.get("/orders/{order_id}")
async def status(order_id: str) -> dict[str, str]:
    if order_id not in statuses:
        raise HTTPException(404, f"no order {order_id!r} (yet)")
    return {"order_id": order_id, "status": statuses[order_id]}


@app.get("/readyz")
async def ready(bus: BusDep, response: Response) -> dict[str, object]:
    state = await readiness(bus)
    response.status_code = 200 if state.ok else 503
    return {"ok": state.ok, "detail": state.detail}
