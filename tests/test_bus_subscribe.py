"""Subscribing: what a handler may look like, groups for events and commands, options
per (topic, group), and the order of the middleware chain."""

from __future__ import annotations

from typing import Any

import pytest

from eventbus import ConfigurationError, Context, Event, EventBus, MemoryIdempotencyStore
from eventbus.errors import DuplicateSubscriptionError
from eventbus.middleware import DeadLetter, Idempotency, Next, Retry, Timeout, correlation
from tests.bus_support import ChargeCard, OrderPlaced, memory_url, new_topic


def test_a_handler_is_a_function_that_returns() -> None:
    # Plain def handlers run in worker threads (tests/test_sync_handlers.py); what
    # neither returns nor can be called is refused.
    bus = EventBus(memory_url())
    with pytest.raises(TypeError, match="is a generator function"):
        bus.subscribe(OrderPlaced)(lambda event: (yield event))
    with pytest.raises(TypeError, match="not callable"):
        bus.subscribe(OrderPlaced)("charge")  # type: ignore[type-var]


@pytest.mark.parametrize("arity", [0, 3])
def test_handler_takes_event_or_event_and_context(arity: int) -> None:
    bus = EventBus(memory_url())

    async def none() -> None: ...

    async def three(event: OrderPlaced, ctx: Context, extra: int) -> None: ...

    handlers: dict[int, Any] = {0: none, 3: three}
    with pytest.raises(TypeError, match=f"not {arity} parameters"):
        bus.subscribe(OrderPlaced)(handlers[arity])


def test_subscribe_needs_a_target_and_a_known_delivery_mode() -> None:
    bus = EventBus(memory_url())
    with pytest.raises(ConfigurationError, match="at least one"):
        bus.subscribe()
    with pytest.raises(ConfigurationError, match="at_least_once"):
        bus.subscribe(OrderPlaced, delivery="exactly_once")  # type: ignore[arg-type]


def test_command_gets_exactly_one_handler_group() -> None:
    bus = EventBus(memory_url())

    @bus.subscribe(ChargeCard, group="billing")
    async def first(command: ChargeCard) -> None: ...

    async def second(command: ChargeCard) -> None: ...

    with pytest.raises(DuplicateSubscriptionError, match="already has handler group 'billing'"):
        bus.subscribe(ChargeCard, group="fraud")(second)
    assert isinstance(DuplicateSubscriptionError("x"), ConfigurationError)


def test_command_group_defaults_to_its_topic_and_event_group_to_the_source() -> None:
    bus = EventBus(memory_url(), source="svc")

    @bus.subscribe(ChargeCard)
    async def charge(command: ChargeCard) -> None: ...

    @bus.subscribe(OrderPlaced)
    async def placed(event: OrderPlaced) -> None: ...

    assert {(s.topic, s.group) for s in bus.subscriptions} == {
        ("test-bus-charges", "test-bus-charges"),
        ("test-bus-orders", "svc"),
    }


def test_one_handler_per_type_and_group() -> None:
    bus = EventBus(memory_url())

    @bus.subscribe(OrderPlaced, group="g")
    async def first(event: OrderPlaced) -> None: ...

    async def second(event: OrderPlaced) -> None: ...

    with pytest.raises(DuplicateSubscriptionError, match="one handler per type and group"):
        bus.subscribe(OrderPlaced, group="g")(second)
    bus.subscribe(OrderPlaced, group="other")(second)  # another group fans out: fine

    topic = new_topic()
    bus.subscribe(topic, group="g")(first)
    with pytest.raises(DuplicateSubscriptionError, match="handler for all types"):
        bus.subscribe(topic, group="g")(second)


def test_several_types_on_one_topic_share_a_subscription() -> None:
    bus = EventBus(memory_url())

    class Shipped(Event, type="test.bus.shipped", topic="test-bus-orders", register=False):
        order_id: str

    @bus.subscribe(OrderPlaced, Shipped, group="g")
    async def either(event: Event) -> None: ...

    (spec,) = bus.subscriptions
    assert set(spec.handlers) == {"test.bus.order-placed", "test.bus.shipped"}


def test_chain_order_is_correlation_custom_deadletter_idempotency_retry_timeout() -> None:
    async def custom(ctx: Context, call_next: Next) -> None:
        await call_next(ctx)

    async def own(ctx: Context, call_next: Next) -> None:
        await call_next(ctx)

    bus = EventBus(memory_url(), middleware=[custom], idempotency=MemoryIdempotencyStore())

    @bus.subscribe(OrderPlaced, timeout=1.0, middleware=[own])
    async def handle(event: OrderPlaced) -> None: ...

    chain = bus.chain_for(bus.subscriptions[0])
    assert chain[:3] == [correlation, custom, own]
    assert [type(m) for m in chain[3:]] == [DeadLetter, Idempotency, Retry, Timeout]
    bare = EventBus(memory_url(), dead_letter=False)
    bare.subscribe(OrderPlaced, delivery="at_most_once")(handle)
    (retry,) = [m for m in bare.chain_for(bare.subscriptions[0]) if isinstance(m, Retry)]
    assert retry.policy.max_attempts == 1 and not retry.broker_redelivery
    assert not any(isinstance(m, DeadLetter) for m in bare.chain_for(bare.subscriptions[0]))
