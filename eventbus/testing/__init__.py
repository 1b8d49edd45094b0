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

The kit needs no test framework: it imports and runs without pytest (use it from
unittest, anyio or a script). Adapters: ``from eventbus.testing import BrokerTarget,
ConformanceSuite``; the suite is made of pytest tests, so it (and only it) is imported
when first named, and needs pytest (``pip install eventbus[test]``).
"""

from typing import TYPE_CHECKING, Any

from eventbus._deprecation import Renamed, renamed
from eventbus.testing.collector import Collector
from eventbus.testing.direct import TestPublisher, call_handler, handler_context
from eventbus.testing.kit import DrainTimeoutError, HandlerCall, TestBus, without_delays
from eventbus.testing.target import BrokerTarget, FaultInjector

if TYPE_CHECKING:
    from eventbus.testing.conformance import ConformanceSuite, on_topic

# Named here, imported on first use: they need pytest, the rest of the kit does not.
_NEED_PYTEST = {"ConformanceSuite", "on_topic"}

_RENAMED: Renamed = {
    "NO_DELAY_RETRY": (
        "without_delays(RetryPolicy(max_attempts=3, in_process_attempts=3))",
        lambda: _direct()._no_delay_retry(),
    ),
    "immediate_retry": (
        "without_delays(RetryPolicy(max_attempts=..., in_process_attempts=...))",
        lambda: _direct()._immediate_retry,
    ),
    "Inbox": (
        "eventbus.testing.Collector (the test helper; eventbus.patterns.Inbox is "
        "the transactional inbox)",
        lambda: Collector,
    ),
}


def _direct() -> Any:
    from eventbus.testing import direct

    return direct


def __getattr__(name: str) -> Any:
    if name in _NEED_PYTEST:
        try:
            from eventbus.testing import conformance
        except ModuleNotFoundError as error:
            if error.name != "pytest":
                raise
            raise ModuleNotFoundError(
                f"eventbus.testing.{name} is the adapter conformance suite, made of pytest "
                "tests, and pytest is not installed: pip install 'eventbus[test]' (the rest "
                "of eventbus.testing works without it)",
                name="pytest",
            ) from error
        return getattr(conformance, name)
    return renamed(__name__, name, _RENAMED)


__all__ = [
    "BrokerTarget",
    "Collector",
    "ConformanceSuite",
    "DrainTimeoutError",
    "FaultInjector",
    "HandlerCall",
    "TestBus",
    "TestPublisher",
    "call_handler",
    "handler_context",
    "on_topic",
    "without_delays",
]
