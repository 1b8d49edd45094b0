"""The official CloudEvents SDK as a peer on a real broker: one sample event with
non-ASCII text in an attribute, an extension and the data, and the checks both
directions share (SDK writes -> eventbus reads; eventbus writes -> SDK reads).

Each binding's test builds the SDK's message, sends it with the broker's raw
client, and reads eventbus's messages back with the raw client for the SDK.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.v1.event import CloudEvent

from eventbus import Context, Envelope, Event, EventBus
from eventbus.testing.conformance import on_topic

SUBJECT = "Euro \u20ac"
CITY = "Z\u00fcrich/Gen\u00e8ve"  # the extension ``city``
NOTE = "Cr\u00e8me br\u00fbl\u00e9e \u2713"  # in the data
WHEN = datetime(2026, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)


class Order(Event, type="interop.order.placed", topic="interop.unused"):
    """The sample's data as eventbus reads it."""

    order_id: str
    note: str


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:8]}"


def sdk_event(order_id: str = "o-1") -> CloudEvent:
    """The SDK's sample event: JSON data, subject, an extension, all non-ASCII."""
    return CloudEvent(
        attributes={
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": "https://sdk.example/orders",
            "type": Order.event_type(),
            "time": WHEN,
            "subject": SUBJECT,
            "datacontenttype": "application/json",
            "city": CITY,
        },
        data={"order_id": order_id, "note": NOTE},
    )


def assert_read_by_eventbus(envelope: Envelope, event: Order, sent: BaseCloudEvent) -> None:
    """What eventbus handled is the SDK's event, every non-ASCII value intact."""
    assert (envelope.id, envelope.source, envelope.type) == (
        sent.get_id(),
        sent.get_source(),
        sent.get_type(),
    )
    assert envelope.time == WHEN
    assert envelope.subject == SUBJECT
    assert envelope.extensions.get("city") == CITY, envelope.extensions
    assert envelope.datacontenttype == "application/json"
    assert (event.order_id, event.note) == (sent.get_data()["order_id"], NOTE)


def assert_read_by_sdk(event: BaseCloudEvent, sent: Envelope) -> None:
    """What the SDK read is the envelope eventbus published, non-ASCII intact."""
    assert (event.get_id(), event.get_source(), event.get_type()) == (
        sent.id,
        sent.source,
        sent.type,
    )
    assert event.get_subject() == SUBJECT
    assert event.get_extension("city") == CITY
    assert event.get_datacontenttype() == "application/json"
    data = event.get_data()
    if isinstance(data, bytes | str):
        data = json.loads(data)
    assert data == {"order_id": "o-2", "note": NOTE}


async def publish_sample(bus: EventBus, topic: str) -> Envelope:
    """eventbus's side of the sample: subject, extension and data as the SDK's."""
    return await bus.publish(
        on_topic(Order, topic)(order_id="o-2", note=NOTE),
        subject=SUBJECT,
        extensions={"city": CITY},
    )


async def handled_by_eventbus(
    url: str, topic: str, send: Callable[[], Awaitable[None]], timeout: float = 30.0
) -> tuple[Envelope, Order]:
    """Subscribe a typed handler to ``topic`` at ``url``, run ``send`` (the raw
    client's publish of the SDK's message) and return what the handler got."""
    bus = EventBus.from_url(url, source="interop")
    got: asyncio.Future[tuple[Envelope, Order]] = asyncio.get_running_loop().create_future()

    @bus.subscribe(on_topic(Order, topic), group=unique("g"))
    async def on_order(event: Order, ctx: Context) -> None:
        if not got.done():
            got.set_result((ctx.envelope, event))

    async with bus:
        await send()
        return await asyncio.wait_for(got, timeout)


def run(scenario: Callable[[], Awaitable[Any]], timeout: float = 90.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(scenario(), timeout)

    return asyncio.run(bounded())
