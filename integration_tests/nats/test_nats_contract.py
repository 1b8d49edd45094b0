"""NATS specifics of the subscription contract: core NATS refuses an explicit
at-least-once pointing to JetStream; JetStream delivers to one group through the
route stream (work-queue retention: kept until that group takes it, then gone)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any

import pytest
from eventbus_nats import NatsAdapter

from eventbus import EventBus
from eventbus.adapter import SubscribeOptions
from eventbus.envelope import Envelope
from eventbus.errors import GuaranteeUnavailableError
from integration_tests import harness
from integration_tests.nats.support import next_delivery

pytestmark = [pytest.mark.broker("nats"), pytest.mark.timeout(120)]


def run(scenario: Coroutine[Any, Any, None], timeout: float = 60.0) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def address(nats_endpoint: harness.Endpoint) -> str:
    return f"{nats_endpoint.host}:{nats_endpoint.port}"


def test_core_refuses_explicit_at_least_once_pointing_to_jetstream(address: str) -> None:
    bus = EventBus.from_url(f"nats+core://me:hunter2@{address}")
    topic = unique("alo")

    async def handle(envelope: Envelope) -> None: ...

    with pytest.raises(GuaranteeUnavailableError) as raised:
        bus.subscribe(topic, group="billing", delivery="at_least_once")(handle)
    text = str(raised.value)
    assert "nats:// (JetStream" in text and topic in text and "hunter2" not in text
    bus.subscribe(topic, group="billing", delivery="at_most_once")(handle)  # asked, and given


def test_route_keeps_a_message_until_its_group_takes_it_then_drops_it(address: str) -> None:
    async def scenario() -> None:
        adapter = NatsAdapter(f"nats://{address}")
        await adapter.connect()
        topic = unique("route")
        try:
            sent = Envelope.create(type="test.ping", source="nats-tests", data=b"7")
            await adapter.publish_to_group(topic, "g", [sent])  # the group does not exist yet
            other = await adapter.subscribe(topic, SubscribeOptions(group="h"))
            mine = await adapter.subscribe(topic, SubscribeOptions(group="g"))
            delivery = await next_delivery(mine)
            assert delivery.topic == topic and delivery.group == "g"
            assert delivery.envelope is not None and delivery.envelope.id == sent.id
            await delivery.ack()
            with pytest.raises(TimeoutError):
                await next_delivery(other, timeout=1.0)
            routes = adapter._routes
            js = adapter.client.jetstream()
            info = await js.consumer_info(routes.stream, routes.consumer(topic, "g"))
            assert info.num_pending == 0 and info.num_ack_pending == 0
            await mine.close()
            await other.close()
        finally:
            await adapter.close()

    run(scenario())
