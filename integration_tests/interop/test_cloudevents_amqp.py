"""The CloudEvents AMQP binding's messages (AMQP 1.0 clients, the SDK's ``amqp``
binding) through a real RabbitMQ, read by eventbus (issue #21): attributes as
``cloudEvents_``/``cloudEvents:`` application properties (AMQP 0-9-1 headers to
aio-pika, which sends them), ``time`` as a native timestamp or as text; and a
message that is no CloudEvent dead-lettered with a reason naming its headers.

And written by eventbus with ``binding=amqp``: ``cloudEvents_`` properties instead
of ``ce-`` headers, taken from the exchange by aio-pika and read by the SDK's
``amqp`` binding, every attribute equal; and a bus with the option handling its
own messages, a failing one retried through the broker's delay queues and then
dead-lettered. (By default eventbus writes the RabbitMQ binding, which the SDK's
``rabbitmq`` binding reads: test_cloudevents_rabbitmq.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage
from cloudevents.core.bindings import amqp as ce_amqp
from cloudevents.core.formats.json import JSONFormat

from eventbus import Context, Envelope, EventBus, RetryPolicy
from eventbus.deadletters import DeadLetters
from eventbus.errors import TopicNotFoundError
from eventbus.testing.conformance import on_topic
from integration_tests import harness
from integration_tests.interop import cloudevents_peer as peer
from integration_tests.interop.test_cloudevents_rabbitmq import sent_by_aio_pika, taken_by_aio_pika

pytestmark = [pytest.mark.broker("rabbitmq"), pytest.mark.timeout(120)]


@pytest.mark.parametrize("prefix", ["cloudEvents_", "cloudEvents:"])
def test_sdk_amqp_binary_event_is_read_by_eventbus(
    rabbitmq_endpoint: harness.Endpoint, prefix: str
) -> None:
    """The SDK's ``cloudEvents_`` properties with ``time`` as AMQP milliseconds; the
    same with the ``cloudEvents:`` separator and ``time`` as its canonical text."""
    url, topic, sent = rabbitmq_endpoint.url, peer.unique("interop.amqp.sdk"), peer.sdk_event()
    message = ce_amqp.to_binary(sent, JSONFormat())
    properties: dict[str, Any] = dict(message.application_properties)
    assert isinstance(properties["cloudEvents_time"], int)  # native: ms since the epoch
    if prefix == "cloudEvents:":
        properties = {
            prefix + name.removeprefix("cloudEvents_"): value for name, value in properties.items()
        }
        properties["cloudEvents:time"] = "2026-05-06T07:08:09.123Z"
    outgoing = aio_pika.Message(
        message.application_data,
        headers=properties,
        content_type=message.properties["content-type"],
    )
    envelope, event = peer.run(lambda: sent_by_aio_pika(url, topic, outgoing))
    peer.assert_read_by_eventbus(envelope, event, sent)


def test_a_message_that_is_no_cloudevent_is_dead_lettered_naming_its_headers(
    rabbitmq_endpoint: harness.Endpoint,
) -> None:
    """Plain JSON with a producer's own headers: dead-lettered, the reason says no
    binding's specversion was there and lists the header names it saw."""
    url, topic, group = rabbitmq_endpoint.url, peer.unique("interop.amqp.foreign"), "g"
    foreign = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "x-tenant": "acme"}

    async def scenario() -> list[Any]:
        bus = EventBus.from_url(url, source="interop")

        @bus.subscribe(on_topic(peer.Order, topic), group=group)
        async def on_order(event: peer.Order) -> None:
            raise AssertionError("a foreign message reached the handler")

        connection = await aio_pika.connect(url)
        try:
            async with bus:
                channel = await connection.channel()
                exchange = await channel.declare_exchange(
                    topic, aio_pika.ExchangeType.TOPIC, durable=True
                )
                body = json.dumps({"order_id": "f", "note": "x"}).encode()
                await exchange.publish(
                    aio_pika.Message(body, headers=foreign, content_type="application/json"),
                    routing_key=topic,
                )
                for _ in range(200):
                    with contextlib.suppress(TopicNotFoundError):
                        letters = await DeadLetters(bus.adapter).list(topic, group)
                        if letters:
                            return letters
                    await asyncio.sleep(0.05)
                raise AssertionError("not dead-lettered")
        finally:
            await connection.close()

    letters = peer.run(scenario)
    assert len(letters) == 1
    reason = letters[0].reason
    assert "cloudEvents_specversion" in reason and "ce-specversion" in reason, reason
    assert "headers: [traceparent, x-tenant]" in reason, reason


def with_amqp_binding(url: str) -> str:
    return url + ("&" if "?" in url else "?") + "binding=amqp"


def test_eventbus_with_binding_amqp_is_read_by_the_sdks_amqp_binding(
    rabbitmq_endpoint: harness.Endpoint,
) -> None:
    """eventbus (``binding=amqp``) publishes; aio-pika takes the message from the
    exchange and hands its headers to the SDK's AMQP reader as the application
    properties: every attribute equal to what was sent, non-ASCII subject, extension
    and data intact, no ``ce-`` header on the wire."""
    url, topic = rabbitmq_endpoint.url, peer.unique("interop.amqp.eventbus")

    async def scenario() -> tuple[Envelope, AbstractIncomingMessage]:
        bus = EventBus.from_url(with_amqp_binding(url), source="interop")
        async with bus:
            return await taken_by_aio_pika(url, topic, lambda: peer.publish_sample(bus, topic))

    sent, received = peer.run(scenario)
    properties: dict[str, Any] = dict(received.headers or {})
    assert not [name for name in properties if name.startswith("ce-")], properties
    assert properties["cloudEvents_subject"] == peer.SUBJECT
    message = ce_amqp.AMQPMessage(
        {"content-type": received.content_type}, properties, received.body
    )
    event = ce_amqp.from_binary(message, JSONFormat())
    peer.assert_read_by_sdk(event, sent)
    read = dict(event.get_attributes())
    assert read.pop("time") == sent.time  # microseconds too: the canonical text
    expected = sent.attributes()
    expected.pop("time")
    assert read == expected


def test_a_bus_with_binding_amqp_handles_its_own_messages(
    rabbitmq_endpoint: harness.Endpoint,
) -> None:
    """Published as ``cloudEvents_`` properties, consumed by a typed handler of the
    same bus: the envelope it gets is the one published, non-ASCII values included."""
    url, topic = with_amqp_binding(rabbitmq_endpoint.url), peer.unique("interop.amqp.self")

    async def scenario() -> tuple[Envelope, Envelope, peer.Order]:
        bus = EventBus.from_url(url, source="interop")
        got: asyncio.Future[tuple[Envelope, peer.Order]] = (
            asyncio.get_running_loop().create_future()
        )

        @bus.subscribe(on_topic(peer.Order, topic), group="g")
        async def on_order(event: peer.Order, ctx: Context) -> None:
            if not got.done():
                got.set_result((ctx.envelope, event))

        async with bus:
            sent = await peer.publish_sample(bus, topic)
            envelope, event = await asyncio.wait_for(got, 30)
            return sent, envelope, event

    sent, envelope, event = peer.run(scenario)
    assert envelope == sent
    assert (event.order_id, event.note) == ("o-2", peer.NOTE)
    assert envelope.subject == peer.SUBJECT and envelope.extensions["city"] == peer.CITY


def test_binding_amqp_messages_are_retried_through_the_broker_then_dead_lettered(
    rabbitmq_endpoint: harness.Endpoint,
) -> None:
    """A failing handler on a ``binding=amqp`` bus: every redelivery through the
    delay queues is read again from its ``cloudEvents_`` headers (three runs), then
    the dead letter holds the event with its non-ASCII values and the reason."""
    url, topic = with_amqp_binding(rabbitmq_endpoint.url), peer.unique("interop.amqp.retry")
    runs: list[str] = []

    async def scenario() -> tuple[Envelope, list[Any]]:
        policy = RetryPolicy(max_attempts=3, in_process_attempts=1, initial_delay=0.05, jitter=0)
        bus = EventBus.from_url(url, source="interop", retry=policy)

        @bus.subscribe(on_topic(peer.Order, topic), group="g")
        async def on_order(event: peer.Order, ctx: Context) -> None:
            runs.append(ctx.envelope.subject or "")
            raise RuntimeError("inventory down")

        async with bus:
            sent = await peer.publish_sample(bus, topic)
            for _ in range(400):
                with contextlib.suppress(TopicNotFoundError):
                    letters = await DeadLetters(bus.adapter).list(topic, "g")
                    if letters:
                        return sent, letters
                await asyncio.sleep(0.05)
            raise AssertionError(f"not dead-lettered after {len(runs)} runs")

    sent, letters = peer.run(scenario)
    assert runs == [peer.SUBJECT] * 3
    (letter,) = letters
    assert letter.attempts == 3 and "inventory down" in letter.message, letter
    assert letter.envelope.id == sent.id and letter.envelope.data == sent.data
    assert letter.envelope.subject == peer.SUBJECT
    assert letter.envelope.extensions["city"] == peer.CITY
