"""The CloudEvents RabbitMQ binding with the official SDK (``cloudevents.core.
bindings.rabbitmq``), through a real RabbitMQ, both ways, non-ASCII values
included (issue #21): the SDK's message sent with aio-pika to the topic's
exchange is handled by eventbus; eventbus's message, taken from a queue bound to
that exchange with aio-pika, is read by the SDK.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from cloudevents.core.bindings import rabbitmq as ce_rabbitmq
from cloudevents.core.formats.json import JSONFormat

from eventbus import Envelope, EventBus
from integration_tests import harness
from integration_tests.interop import cloudevents_peer as peer

pytestmark = [pytest.mark.broker("rabbitmq"), pytest.mark.timeout(120)]


async def sent_by_aio_pika(
    url: str, topic: str, message: aio_pika.Message
) -> tuple[Envelope, peer.Order]:
    """What eventbus's handler gets from ``message`` published by aio-pika to the
    topic's exchange (declared as the adapter declares it)."""
    connection = await aio_pika.connect(url)

    async def send() -> None:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(topic, aio_pika.ExchangeType.TOPIC, durable=True)
        await exchange.publish(message, routing_key=topic)

    try:
        return await peer.handled_by_eventbus(url, topic, send)
    finally:
        await connection.close()


async def taken_by_aio_pika(
    url: str, topic: str, publish: Callable[[], Awaitable[Envelope]]
) -> tuple[Envelope, AbstractIncomingMessage]:
    """Run ``publish`` (eventbus's) and take what it sent from a queue of our own
    bound to the topic's exchange."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(topic, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "#")
        sent = await publish()
        async with queue.iterator(timeout=10) as messages:
            async for message in messages:
                await message.ack()
                return sent, message
        raise AssertionError("nothing arrived")
    finally:
        await connection.close()


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_sdk_event_is_read_by_eventbus(rabbitmq_endpoint: harness.Endpoint, mode: str) -> None:
    """Binary: ``ce-`` headers as UTF-8 text, the content type as the property.
    Structured: the JSON event format as the body, ``application/cloudevents+json``."""
    url, topic, sent = (
        rabbitmq_endpoint.url,
        peer.unique(f"interop.rabbitmq.{mode}"),
        peer.sdk_event(),
    )
    write = ce_rabbitmq.to_binary if mode == "binary" else ce_rabbitmq.to_structured
    message = write(sent, JSONFormat())
    outgoing = aio_pika.Message(
        message.body, headers=dict(message.headers), content_type=message.content_type
    )
    envelope, event = peer.run(lambda: sent_by_aio_pika(url, topic, outgoing))
    peer.assert_read_by_eventbus(envelope, event, sent)


def test_eventbus_event_is_read_by_the_sdk(rabbitmq_endpoint: harness.Endpoint) -> None:
    url, topic = rabbitmq_endpoint.url, peer.unique("interop.rabbitmq.eventbus")

    async def scenario() -> tuple[Envelope, AbstractIncomingMessage]:
        bus = EventBus.from_url(url, source="interop")
        async with bus:
            return await taken_by_aio_pika(url, topic, lambda: peer.publish_sample(bus, topic))

    sent, received = peer.run(scenario)
    headers: dict[str, Any] = dict(received.headers or {})
    event = ce_rabbitmq.from_binary(
        ce_rabbitmq.RabbitMQMessage(
            headers=headers, content_type=received.content_type, body=received.body
        ),
        JSONFormat(),
    )
    peer.assert_read_by_sdk(event, sent)
