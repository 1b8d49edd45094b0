"""Testing kit: test your own service, and the conformance suite for adapters.

Your service, on a private in-memory broker per test::

    from eventbus.testing import TestBus, call_handler

    async def test_charges_the_order() -> None:
        async with TestBus(create_bus()) as tb:
            await tb.bus.publish(OrderPlaced(order_id="1"))
            await tb.drain()
            assert tb.published(PaymentCharged) == [PaymentCharged(order_id="1")]

    async def test_charge_alone() -> None:
        assert await call_handler(charge, OrderPlaced(order_id="1")) == [
            PaymentCharged(order_id="1")]

Adapters: ``from eventbus.testing import BrokerTarget, ConformanceSuite``.
"""

from eventbus.testing.conformance import ConformanceSuite, Inbox, on_topic
from eventbus.testing.direct import (
    NO_DELAY_RETRY,
    TestPublisher,
    call_handler,
    handler_context,
    immediate_retry,
)
from eventbus.testing.kit import DrainTimeoutError, HandlerCall, TestBus, without_delays
from eventbus.testing.target import BrokerTarget, FaultInjector

__all__ = [
    "NO_DELAY_RETRY",
    "BrokerTarget",
    "ConformanceSuite",
    "DrainTimeoutError",
    "FaultInjector",
    "HandlerCall",
    "Inbox",
    "TestBus",
    "TestPublisher",
    "call_handler",
    "handler_context",
    "immediate_retry",
    "on_topic",
    "without_delays",
]
