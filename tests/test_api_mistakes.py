"""Calling the bus the wrong way gets one clear error at the call, naming the mistake and
the right spelling: not an AttributeError from deep inside, not silence, not a runtime
dead letter. Every such error is a ``UsageError`` (a ``ConfigurationError`` and a
``TypeError``)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from eventbus import Context, Envelope, Event, EventBus
from eventbus.errors import ConfigurationError, UsageError
from eventbus.testing import TestPublisher, call_handler
from tests.bus_support import ChargeCard, OrderPlaced, PaymentTaken, memory_url


class PlainModel(BaseModel):
    order_id: str


@pytest.mark.parametrize(
    ("message", "says"),
    [
        ({"order_id": "1"}, "not a dict"),
        (OrderPlaced, "the class OrderPlaced, not an instance: publish"),
        (
            PlainModel(order_id="1"),
            "PlainModel is a pydantic model but not an eventbus Event or Command",
        ),
        ("order placed", "not a str"),
        (None, "not None"),
    ],
    ids=["dict", "class", "pydantic-model", "str", "none"],
)
@pytest.mark.asyncio
async def test_publishing_what_is_not_an_event_instance_says_so(message: Any, says: str) -> None:
    async with EventBus(memory_url()) as bus:
        for publish in (
            bus.publish,
            lambda m: bus.publish_many([OrderPlaced(order_id="0"), m]),
            TestPublisher().publish,
        ):
            with pytest.raises(UsageError) as info:
                await publish(message)
            assert says in str(info.value)
            assert isinstance(info.value, ConfigurationError) and isinstance(info.value, TypeError)


@pytest.mark.asyncio
async def test_sending_what_is_not_a_command_says_what_it_is() -> None:
    async with EventBus(memory_url()) as bus:
        with pytest.raises(UsageError, match="not a dict"):
            await bus.send({"order_id": "1"})  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError, match="is an event"):
            await bus.send(OrderPlaced(order_id="1"))  # type: ignore[arg-type]


def test_subscribe_without_parentheses_is_refused_not_silently_empty() -> None:
    bus = EventBus(memory_url())
    with pytest.raises(UsageError) as info:

        @bus.subscribe  # type: ignore[arg-type]
        async def handle(event: OrderPlaced) -> None: ...

    message = str(info.value)
    assert "@bus.subscribe(OrderPlaced)" in message and "parentheses" in message
    assert bus.subscriptions == []


def test_subscribe_to_an_event_instance_is_refused_not_a_topic_named_after_its_fields() -> None:
    bus = EventBus(memory_url())
    with pytest.raises(UsageError, match=r"an OrderPlaced instance.*subscribe\(OrderPlaced"):
        bus.subscribe(OrderPlaced(order_id="1"))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="PlainModel is a pydantic model"):
        bus.subscribe(PlainModel)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="not an int"):
        bus.subscribe(42)  # type: ignore[arg-type]
    assert bus.subscriptions == []


def test_context_first_is_refused_naming_the_order() -> None:
    bus = EventBus(memory_url())

    async def charge(ctx: Context, event: OrderPlaced) -> None: ...

    with pytest.raises(UsageError, match=r"\(event, ctx\).*charge\(event: OrderPlaced, ctx"):
        bus.subscribe(OrderPlaced)(charge)
    assert bus.subscriptions == []


def test_an_annotation_that_disagrees_with_the_subscribed_class_is_refused() -> None:
    bus = EventBus(memory_url())

    async def charge(event: PaymentTaken) -> None: ...

    with pytest.raises(UsageError, match=r"annotates its event as PaymentTaken.*OrderPlaced"):
        bus.subscribe(OrderPlaced)(charge)
    assert bus.subscriptions == []


def test_annotations_that_agree_are_accepted() -> None:
    bus = EventBus(memory_url())

    async def union(event: OrderPlaced | PaymentTaken, ctx: Context) -> None: ...

    async def base(event: Event) -> None: ...

    async def untyped(event, ctx) -> None: ...  # type: ignore[no-untyped-def]

    async def envelope(event: Envelope) -> None: ...

    async def command(command: ChargeCard) -> None: ...

    async def any_event(event: Any) -> None: ...

    for fn in (union, base, untyped, envelope, any_event):
        bus.subscribe(OrderPlaced, PaymentTaken, group=fn.__name__)(fn)
    bus.subscribe(ChargeCard)(command)
    bus.subscribe("a-topic", group="raw")(base)


@pytest.mark.asyncio
async def test_call_handler_checks_the_same_way() -> None:
    async def charge(ctx: Context, event: OrderPlaced) -> None: ...

    with pytest.raises(UsageError, match=r"\(event, ctx\)"):
        await call_handler(charge, OrderPlaced(order_id="1"))
