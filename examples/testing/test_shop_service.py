"""Tests of the shop service with eventbus.testing (run with pytest and pytest-asyncio)."""

import pytest
from shop import OrderPlaced, PaymentCharged, bus, charge, gateway

from eventbus.testing import TestBus, call_handler


@pytest.fixture(autouse=True)
def fresh_gateway() -> None:
    gateway.charged.clear()
    gateway.timeouts_to_come = 0


@pytest.mark.asyncio
async def test_an_order_is_charged() -> None:
    async with TestBus(bus) as tb:
        await bus.publish(OrderPlaced(order_id="o-1", amount_cents=500))
        await tb.drain()
    assert tb.received(charge) == [OrderPlaced(order_id="o-1", amount_cents=500)]
    assert tb.published(PaymentCharged) == [PaymentCharged(order_id="o-1", amount_cents=500)]


@pytest.mark.asyncio
async def test_a_gateway_timeout_is_retried_at_once() -> None:
    gateway.timeouts_to_come = 1
    async with TestBus(bus) as tb:  # retries lose their delays under TestBus
        await bus.publish(OrderPlaced(order_id="o-2", amount_cents=500))
        await tb.drain()
    assert [call.attempt for call in tb.retried(charge)] == [2]
    assert gateway.charged == ["o-2"]


@pytest.mark.asyncio
async def test_a_duplicate_delivery_is_skipped() -> None:
    async with TestBus(bus) as tb:
        sent = await bus.publish(OrderPlaced(order_id="o-3", amount_cents=500))
        await bus.publish_envelopes("shop-orders", [sent])  # the same event id again
        await tb.drain()
    assert gateway.charged == ["o-3"]


@pytest.mark.asyncio
async def test_a_bad_amount_is_dead_lettered() -> None:
    async with TestBus(bus) as tb:
        await bus.publish(OrderPlaced(order_id="o-4", amount_cents=0))
        await tb.drain()
    (letter,) = tb.dead_lettered(charge)
    assert letter.reason == "ValueError: cannot charge 0 cents for order o-4"
    assert letter.attempts == 3


@pytest.mark.asyncio
async def test_the_handler_alone() -> None:
    published = await call_handler(charge, OrderPlaced(order_id="o-5", amount_cents=100), attempt=2)
    assert published == [PaymentCharged(order_id="o-5", amount_cents=100)]
