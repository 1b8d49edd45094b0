"""Event design rules: integration events mapped at publish time, immutable events."""

from __future__ import annotations

import pydantic
import pytest

from eventbus import Command, Context, Envelope, Event, EventBus
from eventbus.errors import ConfigurationError
from eventbus.patterns.design import IntegrationEvents
from tests.bus_support import Collector, memory_url


class LineItem(pydantic.BaseModel, frozen=True):
    sku: str
    price_cents: int


class CheckoutCompleted(
    Event, type="test.design.checkout-completed", topic="test-design-internal", version=1
):
    order_id: str
    customer_id: str
    card_number: str
    address: str
    items: tuple[LineItem, ...]


class CheckoutCompletedPublic(
    Event, type="test.design.checkout-completed.public", topic="test-design-public", version=1
):
    order_id: str
    customer_id: str
    total_cents: int


class CartAbandoned(
    Event, type="test.design.cart-abandoned", topic="test-design-internal", version=1
):
    cart_id: str


class ChargeCustomer(Command, type="test.design.charge", topic="test-design-charge", version=1):
    order_id: str


def declared() -> IntegrationEvents:
    integration = IntegrationEvents()

    @integration.maps(CheckoutCompleted)
    def _public(event: CheckoutCompleted) -> CheckoutCompletedPublic:
        return CheckoutCompletedPublic(
            order_id=event.order_id,
            customer_id=event.customer_id,
            total_cents=sum(i.price_cents for i in event.items),
        )

    @integration.maps(CartAbandoned)
    def _internal(event: CartAbandoned) -> None:
        return None

    return integration


def checkout() -> CheckoutCompleted:
    return CheckoutCompleted(
        order_id="o-1",
        customer_id="c-9",
        card_number="4111 1111",
        address="1 Main St",
        items=(LineItem(sku="a", price_cents=250), LineItem(sku="b", price_cents=100)),
    )


@pytest.mark.asyncio
async def test_other_services_receive_only_the_integration_event() -> None:
    integration = declared()
    bus = EventBus(memory_url(), source="checkout", publish_middleware=[integration.middleware])
    public: Collector[tuple[CheckoutCompletedPublic, Envelope]] = Collector()
    internal: Collector[Envelope] = Collector()

    @bus.subscribe(CheckoutCompletedPublic, group="billing")
    async def billing(event: CheckoutCompletedPublic, ctx: Context) -> None:
        public.add((event, ctx.envelope))

    @bus.subscribe("test-design-internal", group="spy")
    async def spy(envelope: Envelope) -> None:
        internal.add(envelope)

    async with bus:
        sent = await bus.publish(checkout(), key="o-1", correlation_id="flow-1")
        await bus.publish(CartAbandoned(cart_id="c"))
        ((event, envelope),) = await public.wait_count(1)
    assert event == CheckoutCompletedPublic(order_id="o-1", customer_id="c-9", total_cents=350)
    assert b"card" not in envelope.data and b"Main St" not in envelope.data
    assert envelope.id == sent.id and envelope.partitionkey == "o-1"
    assert envelope.correlationid == "flow-1"
    assert internal.items == []  # neither the domain event nor the internal-only one left


def test_explicit_mapping_and_unmapped_events() -> None:
    integration = declared()
    assert integration.to_integration(checkout()) == CheckoutCompletedPublic(
        order_id="o-1", customer_id="c-9", total_cents=350
    )
    assert integration.to_integration(CartAbandoned(cart_id="c")) is None
    other = CheckoutCompletedPublic(order_id="x", customer_id="y", total_cents=1)
    assert integration.to_integration(other) is other  # no mapping: published as it is


def test_a_mapping_is_declared_once_for_an_event_class() -> None:
    integration = declared()
    with pytest.raises(ConfigurationError):
        integration.maps(CheckoutCompleted)
    with pytest.raises(ConfigurationError):
        integration.maps(ChargeCustomer)  # type: ignore[type-var]


@pytest.mark.parametrize("message", [checkout(), ChargeCustomer(order_id="o-1")])
def test_published_messages_are_immutable(message: Event | Command) -> None:
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        message.order_id = "changed"  # type: ignore[misc]
    assert message.order_id == "o-1"  # type: ignore[attr-defined]


def test_nested_values_of_an_event_are_immutable_when_declared_so() -> None:
    event = checkout()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        event.items[0].price_cents = 0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        event.items.append(LineItem(sku="c", price_cents=1))  # type: ignore[attr-defined]
