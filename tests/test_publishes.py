"""``bus.publishes(...)`` declares what a service publishes (for its AsyncAPI document);
a choreography step declares the event its return annotation names."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from eventbus import Context, Event, EventBus
from eventbus.declarations import returned_messages
from eventbus.errors import ConfigurationError
from eventbus.patterns.sagas import Choreography
from tests.bus_support import OrderPlaced, PaymentTaken, memory_url


class Shipped(Event, type="test.publishes.shipped", topic="test-publishes"):
    order_id: str


def test_published_classes_are_declared_once_in_order() -> None:
    bus = EventBus(memory_url())
    bus.publishes(OrderPlaced, PaymentTaken)
    bus.publishes(OrderPlaced)
    assert bus.published == [OrderPlaced, PaymentTaken]


def test_publishes_also_decorates_a_handler() -> None:
    bus = EventBus(memory_url())

    @bus.publishes(PaymentTaken)
    @bus.subscribe(OrderPlaced, group="billing")
    async def charge(event: OrderPlaced, ctx: Context) -> None:
        await ctx.publish(PaymentTaken(order_id=event.order_id))

    assert bus.published == [PaymentTaken]
    assert charge.__name__ == "charge"


def test_only_message_classes_can_be_declared() -> None:
    bus = EventBus(memory_url())
    refused = r"publishes\(\) takes Event or Command classes, not 'orders' \(a 'str'\)"
    with pytest.raises(ConfigurationError, match=refused):
        bus.publishes("orders")  # type: ignore[arg-type]


def test_a_choreography_step_declares_what_it_returns() -> None:
    bus = EventBus(memory_url())
    flow = Choreography(bus, group="shipping")

    @flow.step(PaymentTaken)
    async def ship(event: PaymentTaken, ctx: Context) -> Shipped:
        return Shipped(order_id=event.order_id)

    @flow.step(OrderPlaced)
    async def note(event: OrderPlaced, ctx: Context) -> None:
        return None

    assert bus.published == [Shipped]


def test_return_annotations_name_their_message_classes() -> None:
    async def several() -> Shipped | list[PaymentTaken] | None: ...
    async def sequence() -> Sequence[OrderPlaced]: ...
    async def unresolvable() -> NotDefinedAnywhere: ...  # type: ignore[name-defined]  # noqa: F821

    assert returned_messages(several) == [Shipped, PaymentTaken]
    assert returned_messages(sequence) == [OrderPlaced]
    assert returned_messages(unresolvable) == []
    assert returned_messages(lambda event, why: Shipped(order_id="1")) == []
