"""The orders API through httpx's ASGI transport, its lifespan run as a server would."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from asgi_lifespan import LifespanManager

from eventbus.testing import TestBus
from examples.fastapi_orders.app import OrderSubmitted, app, bus, statuses


@pytest_asyncio.fixture
async def client() -> AsyncIterator[tuple[httpx.AsyncClient, TestBus]]:
    statuses.clear()
    async with TestBus(bus) as tb, LifespanManager(app) as running:
        transport = httpx.ASGITransport(app=running.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            yield http, tb


@pytest.mark.asyncio
async def test_a_submitted_order_is_published_and_read_back(
    client: tuple[httpx.AsyncClient, TestBus],
) -> None:
    http, tb = client
    answer = await http.post(
        "/orders", json={"order_id": "o-1", "customer_id": "c-9", "total_cents": 1250}
    )
    assert answer.status_code == 202
    await tb.drain()
    assert tb.published(OrderSubmitted) == [
        OrderSubmitted(order_id="o-1", customer_id="c-9", total_cents=1250)
    ]
    assert tb.published_envelopes()[0].id == answer.json()["event_id"]
    assert (await http.get("/orders/o-1")).json() == {"order_id": "o-1", "status": "submitted"}


@pytest.mark.asyncio
async def test_readiness_follows_the_bus(client: tuple[httpx.AsyncClient, TestBus]) -> None:
    http, _ = client
    answer = await http.get("/readyz")
    assert answer.status_code == 200 and answer.json()["ok"] is True


@pytest.mark.asyncio
async def test_the_lifespan_starts_and_stops_the_bus() -> None:
    async with TestBus(bus):
        pass  # TestBus started and stopped it: now the app's lifespan alone
    async with LifespanManager(app):
        assert (await bus.health()).ok
    assert not (await bus.health()).ok  # stopped with the app
