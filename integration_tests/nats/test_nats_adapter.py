"""The NATS adapters against a real nats-server (JetStream enabled), adapter level.

What the conformance suite can't say: fail-fast connect with a masked URL, size
checked before anything is sent, a partial batch failure naming its index,
``in_progress`` keeping a slow handler's message, ``close()`` ending while the
server is unreachable, and CloudEvents interop with the official SDK's binding
(the NATS binding uses the HTTP header names).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import nats
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from eventbus_nats import NatsAdapter, NatsCoreAdapter
from nats.js.api import DiscardPolicy, StreamConfig

from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.envelope import Envelope
from eventbus.errors import (
    BatchPublishError,
    BrokerConnectionError,
    MessageTooLargeError,
    PublishError,
    TopicNotFoundError,
)
from integration_tests import harness
from integration_tests.harness import processes

pytestmark = [pytest.mark.broker("nats"), pytest.mark.timeout(120)]


def run(scenario: Coroutine[Any, Any, None], timeout: float = 60.0) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ping(n: int, size: int = 0) -> Envelope:
    return Envelope.create(
        type="test.ping", source="nats-tests", data=b'{"n":%d,"pad":"%s"}' % (n, b"x" * size)
    )


@pytest.fixture(scope="module")
def nats_url(nats_endpoint: harness.Endpoint) -> str:
    return f"nats://{nats_endpoint.host}:{nats_endpoint.port}"


async def first(subscription: Subscription, timeout: float = 10.0) -> Delivery:
    async def take() -> Delivery:
        async for delivery in subscription:
            return delivery
        raise AssertionError("the subscription ended")

    return await asyncio.wait_for(take(), timeout)


async def nothing_within(subscription: Subscription, seconds: float) -> None:
    try:
        delivery = await first(subscription, seconds)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected delivery attempt {delivery.attempt}: {delivery.envelope}")


def test_connect_fails_fast_with_masked_url() -> None:
    port = processes.free_port()  # nothing listens here

    async def scenario() -> None:
        for adapter in (
            NatsAdapter(f"nats://bob:hunter2@127.0.0.1:{port}?connect_timeout=1"),
            NatsCoreAdapter(f"nats+core://bob:hunter2@127.0.0.1:{port}?connect_timeout=1"),
        ):
            started = time.monotonic()
            with pytest.raises(BrokerConnectionError) as raised:
                await adapter.connect()
            assert time.monotonic() - started < 4.0
            assert "hunter2" not in str(raised.value) and f":{port}" in str(raised.value)
            await adapter.close()

    run(scenario())


def test_oversize_refused_before_anything_is_sent(nats_url: str) -> None:
    async def scenario() -> None:
        topic = unique("big")
        for adapter in (
            NatsAdapter(nats_url + "?max_message_bytes=2000"),
            NatsCoreAdapter(
                nats_url.replace("nats://", "nats+core://") + "?max_message_bytes=2000"
            ),
        ):
            await adapter.connect()
            with pytest.raises(MessageTooLargeError) as raised:
                await adapter.publish(topic, [ping(1), ping(2, size=3000)])
            assert "2000" in str(raised.value)
            await adapter.close()
        jetstream = NatsAdapter(nats_url)
        await jetstream.connect()
        with pytest.raises(TopicNotFoundError):  # not even the stream was created
            await jetstream.read(topic)
        await jetstream.close()

    run(scenario())


def test_partial_batch_failure_names_the_index(nats_url: str) -> None:
    """A stream set up by an operator to hold two messages and refuse more (discard
    new) refuses the third message of a batch: BatchPublishError names that index,
    the others are stored. (A message over the stream's max_msg_size is refused
    before anything is sent: see test_nats_limits.py.)"""

    async def scenario() -> None:
        topic = unique("partial")
        adapter = NatsAdapter(nats_url)
        await adapter.connect()
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(
                name=f"EB_{topic}", subjects=[topic], max_msgs=2, discard=DiscardPolicy.NEW
            )
        )
        batch = [ping(0), ping(1), ping(2)]
        with pytest.raises(BatchPublishError) as raised:
            await adapter.publish(topic, batch)
        assert set(raised.value.failures) == {2}, raised.value.failures
        assert isinstance(raised.value.failures[2], PublishError)
        stored = [r.envelope.id for r in await adapter.read(topic) if r.envelope]
        assert stored == [batch[0].id, batch[1].id]
        await js.delete_stream(f"EB_{topic}")
        await nc.close()
        await adapter.close()

    run(scenario())


def test_slow_handler_is_kept_alive_past_ack_wait(nats_url: str) -> None:
    """With ack_wait=1 s a handler working 2.5 s is not redelivered: the subscription
    sends in_progress while the delivery is unsettled."""

    async def scenario() -> None:
        topic = unique("slow")
        adapter = NatsAdapter(nats_url + "?ack_wait=1")
        await adapter.connect()
        subscription = await adapter.subscribe(topic, SubscribeOptions(group="g", prefetch=4))
        await adapter.publish(topic, [ping(1)])
        delivery = await first(subscription)
        assert delivery.attempt == 1
        await asyncio.sleep(2.5)  # the handler's work, 2.5x the ack wait
        await delivery.ack()
        await nothing_within(subscription, 1.5)
        await adapter.close()

    run(scenario())


def test_nack_delay_and_delivery_count(nats_url: str) -> None:
    """nack(delay) is held back by the server; the attempt is the server's count."""

    async def scenario() -> None:
        topic = unique("nak")
        adapter = NatsAdapter(nats_url)
        await adapter.connect()
        subscription = await adapter.subscribe(topic, SubscribeOptions(group="g"))
        await adapter.publish(topic, [ping(1)])
        delivery = await first(subscription)
        nacked = time.monotonic()
        await delivery.nack(0.6)
        again = await first(subscription)
        assert time.monotonic() - nacked >= 0.5 and again.attempt == 2
        await again.ack()
        await adapter.close()

    run(scenario())


def test_close_ends_while_the_server_is_unreachable(nats_endpoint: harness.Endpoint) -> None:
    async def scenario() -> None:
        proxy = harness.FaultProxy(nats_endpoint.host, nats_endpoint.port).start()
        try:
            adapter = NatsAdapter(f"nats://127.0.0.1:{proxy.port}")
            await adapter.connect()
            topic = unique("cut")
            subscription = await adapter.subscribe(topic, SubscribeOptions(group="g"))
            await adapter.publish(topic, [ping(1)])
            held = await first(subscription)
            await proxy.refuse_connections(30.0)
            started = time.monotonic()
            await asyncio.wait_for(adapter.close(), 15.0)
            assert time.monotonic() - started < 15.0
            assert held.settled in (None, "nack")
        finally:
            proxy.stop()

    run(scenario())


def test_new_groups_start_from_earliest_or_latest(nats_url: str) -> None:
    async def scenario() -> None:
        topic = unique("start")
        adapter = NatsAdapter(nats_url)
        await adapter.connect()
        await adapter.publish(topic, [ping(1)])
        old = await adapter.subscribe(topic, SubscribeOptions(group="old", start_from="earliest"))
        new = await adapter.subscribe(topic, SubscribeOptions(group="new", start_from="latest"))
        assert (await first(old)).envelope is not None
        await adapter.publish(topic, [ping(2)])
        got = await first(new)
        assert got.envelope is not None and got.envelope.data.startswith(b'{"n":2')
        await adapter.close()

    run(scenario())


def test_cloudevents_sdk_interop(nats_url: str) -> None:
    """A message the official SDK's binary binding writes (ce- headers) is read by
    the adapter, and what the adapter publishes is read back by the SDK."""

    async def scenario() -> None:
        topic = unique("ce")
        adapter = NatsAdapter(nats_url)
        await adapter.connect()
        subscription = await adapter.subscribe(topic, SubscribeOptions(group="g"))
        theirs = CloudEvent(
            attributes={
                "id": "sdk-1",
                "type": "com.example.made",
                "source": "/sdk",
                "datacontenttype": "application/json",
                "subject": "s1",
            },
            data={"n": 1},
        )
        message = ce_http.to_binary(theirs, JSONFormat())
        nc = await nats.connect(nats_url)
        await nc.jetstream().publish(topic, message.body, headers=dict(message.headers))
        delivery = await first(subscription)
        assert delivery.envelope is not None, delivery.decode_error
        envelope = delivery.envelope
        assert (envelope.id, envelope.type, envelope.source, envelope.subject) == (
            "sdk-1",
            "com.example.made",
            "/sdk",
            "s1",
        )
        assert envelope.data == message.body
        await delivery.ack()
        ours = ping(7)
        await adapter.publish(topic, [ours])
        stored = (await adapter.read(topic))[-1]
        assert stored.envelope == ours
        raw = await nc.jetstream().get_msg(f"EB_{topic}", 2)
        event = ce_http.from_binary(
            ce_http.HTTPMessage(headers=dict(raw.headers or {}), body=raw.data or b""), JSONFormat()
        )
        assert (event.get_id(), event.get_type(), event.get_source()) == (
            ours.id,
            "test.ping",
            "nats-tests",
        )
        await nc.close()
        await adapter.close()

    run(scenario())


def test_fetched_message_waiting_to_be_handed_out_is_kept_alive(nats_url: str) -> None:
    """A message fetched but not yet taken from the subscription (its handler is
    busy elsewhere) gets in_progress too: taken 2.5x ack_wait later it is still the
    first delivery and does not come back after being acked."""

    async def scenario() -> None:
        topic = unique("waiting")
        adapter = NatsAdapter(nats_url + "?ack_wait=1")
        await adapter.connect()
        subscription = await adapter.subscribe(topic, SubscribeOptions(group="g", prefetch=4))
        await adapter.publish(topic, [ping(1)])
        await asyncio.sleep(2.5)  # nobody iterates meanwhile: the message waits locally
        delivery = await first(subscription)
        assert delivery.attempt == 1, f"redelivered while waiting: attempt {delivery.attempt}"
        await delivery.ack()
        await nothing_within(subscription, 1.5)
        await adapter.close()

    run(scenario())
