"""Who answers a request, and what a requester gets when the answer cannot be encoded
(issue #19, defects 6 and 7), on the memory broker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from eventbus import Command, Context, Envelope, Event, EventBus
from eventbus.deadletters import dlq_topic
from eventbus.middleware.base import PublishNext
from eventbus.requests import RequestFailedError, UnencodableReplyError
from tests.bus_support import Collector, Records, memory_url

pytestmark = pytest.mark.asyncio


class Reserve(Command, type="replies-test.reserve", topic="replies-test.stock"):
    sku: str


class Reserved(Event, type="replies-test.reserved", topic="replies-test.events"):
    sku: str
    left: int


class Place(Command, type="replies-test.place", topic="replies-test.orders"):
    order_id: str


class OrderRow:
    """What a repository call returns: no JSON form."""

    def __init__(self, order_id: str) -> None:
        self.order_id = order_id


async def test_only_the_commands_handler_group_replies() -> None:
    """A topic-wide observer of the command topic (an audit tap, in its own group)
    sees the request but does not answer it: the requester gets the handler's reply."""
    url = memory_url()
    service = EventBus(url, source="stock")
    audit = EventBus(url, source="audit")
    client = EventBus(url, source="shop")
    logged: Collector[str] = Collector()
    replies: list[Envelope] = []

    async def keep_replies(
        topic: str, envelopes: Sequence[Envelope], call_next: PublishNext
    ) -> None:
        replies.extend(envelopes)
        await call_next(topic, envelopes)

    audit.publish_middleware.append(keep_replies)

    @service.subscribe(Reserve)
    async def reserve(command: Reserve) -> Reserved:
        await logged.wait_count(1, 5)  # the tap has seen (and would have answered) first
        return Reserved(sku=command.sku, left=2)

    @audit.subscribe(Reserve.default_topic(), group="audit")
    async def tap(message: object, ctx: Context) -> str:
        logged.add(ctx.envelope.type)
        return "logged"  # a value a reply step would send

    async with service, audit, client:
        reply = await client.request(Reserve(sku="tea"), timeout=5)
    assert reply == Reserved(sku="tea", left=2)
    assert logged.items == ["replies-test.reserve"]
    assert replies == [], "the audit tap answered the request"


async def test_an_unencodable_result_is_an_error_reply_and_the_command_is_acked() -> None:
    """The handler succeeded (its effect is done) but its return value has no JSON
    form: the requester gets an error saying so at once, and the command is acked,
    not dead-lettered (a replay would apply the effect twice)."""
    url = memory_url()
    bus = EventBus(url, source="shop")
    placed: list[str] = []
    dead: list[str] = []

    @bus.subscribe(Place)
    async def place(command: Place) -> OrderRow:
        placed.append(command.order_id)
        return OrderRow(command.order_id)

    @bus.subscribe(dlq_topic(Place.default_topic(), Place.default_topic()), group="ops")
    async def dead_letter(envelope: Envelope) -> None:
        dead.append(envelope.id)

    with Records("eventbus.handler") as logs:
        async with bus:
            with pytest.raises(UnencodableReplyError, match="OrderRow") as failed:
                await bus.request(Place(order_id="o-1"), timeout=5)
            await bus.publish(Place(order_id="o-2"))  # the handler's lane is free again
            while len(placed) < 2:  # noqa: ASYNC110 - the handler appends in its own task
                await asyncio.sleep(0.01)
    assert isinstance(failed.value, RequestFailedError)
    assert "succeeded" in str(failed.value)
    assert failed.value.error_type == "UnencodableReplyError"
    assert placed == ["o-1", "o-2"] and dead == []
    assert any("OrderRow" in m for m in logs.messages(logging.ERROR))
