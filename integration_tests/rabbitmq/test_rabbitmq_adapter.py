"""The RabbitMQ adapter against the real broker: what the conformance suite can't say.

Adapter level: the tests drive ``publish``/``subscribe``/``Delivery`` (and a raw
aio-pika client for the other side of interop) and observe the broker.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import aio_pika
import pytest
from eventbus_rabbitmq import RabbitMQAdapter

from eventbus import Event, EventBus
from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.deadletters import DeadLetters
from eventbus.envelope import Envelope
from eventbus.errors import BrokerConnectionError, ConfigurationError, PublishError
from integration_tests import harness

pytestmark = [pytest.mark.broker("rabbitmq"), pytest.mark.timeout(120)]


def run(scenario: Callable[[], Coroutine[Any, Any, None]], timeout: float = 60.0) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def with_options(url: str, **options: object) -> str:
    joiner = "&" if "?" in url else "?"
    return url + joiner + "&".join(f"{k}={v}" for k, v in options.items())


def ping(n: int) -> Envelope:
    return Envelope.create(
        type="test.ping",
        source="rabbitmq-tests",
        data=b'{"n":%d}' % n,
        datacontenttype="application/json",
    )


async def next_delivery(subscription: Subscription, timeout: float = 15.0) -> Delivery:
    iterator = subscription.__aiter__()
    return await asyncio.wait_for(iterator.__anext__(), timeout)


@pytest.fixture(scope="module")
def url(rabbitmq_endpoint: harness.Endpoint) -> str:
    return rabbitmq_endpoint.url


class Order(Event, type="shop.order.placed", topic="unused"):
    """A typed event for the interop test."""

    order_id: str
    amount: int


def test_unroutable_publish_is_an_error_not_a_silent_drop(url: str) -> None:
    async def scenario() -> None:
        topic = unique("nobody")
        adapter = RabbitMQAdapter(url)
        lenient = RabbitMQAdapter(with_options(url, mandatory="false"))
        try:
            with pytest.raises(PublishError, match="no queue is bound"):
                await adapter.publish(topic, [ping(1)])
            await lenient.publish(topic, [ping(2)])  # documented opt-out: dropped
        finally:
            await adapter.close()
            await lenient.close()

    run(scenario)


def test_official_sdk_messages_reach_a_typed_handler_and_ours_parse_with_it(url: str) -> None:
    from cloudevents.core.bindings import rabbitmq
    from cloudevents.core.v1.event import CloudEvent

    async def scenario() -> None:
        topic = unique("interop")
        got: asyncio.Queue[Order] = asyncio.Queue()
        bus = EventBus.from_url(url, source="/interop-tests")

        @bus.subscribe(Order, topic, group=unique("g"))
        async def handle(event: Order) -> None:
            got.put_nowait(event)

        await bus.start()
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            exchange = await channel.get_exchange(topic)
            # Theirs -> our typed handler.
            sdk = rabbitmq.to_binary_event(
                CloudEvent(
                    attributes={
                        "type": "shop.order.placed",
                        "source": "/sdk",
                        "datacontenttype": "application/json",
                    },
                    data={"order_id": "o-1", "amount": 7},
                )
            )
            await exchange.publish(
                aio_pika.Message(
                    sdk.body, headers=dict(sdk.headers), content_type=sdk.content_type
                ),
                routing_key="shop.order.placed",
            )
            event = await asyncio.wait_for(got.get(), 15)
            assert (event.order_id, event.amount) == ("o-1", 7)
            # Ours -> the SDK's from_binary.
            queue = await channel.declare_queue(exclusive=True)
            await queue.bind(exchange, "#")
            sent = await bus.publish(Order(order_id="o-2", amount=9), topic=topic)
            raw = await _get(queue)
            parsed = rabbitmq.from_binary_event(
                rabbitmq.RabbitMQMessage(
                    headers={k: str(v) for k, v in (raw.headers or {}).items()},
                    content_type=raw.content_type,
                    body=raw.body,
                )
            )
            assert parsed.get_id() == sent.id and parsed.get_type() == "shop.order.placed"
            assert parsed.get_data() == {"order_id": "o-2", "amount": 9}
            assert raw.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        finally:
            await connection.close()
            await bus.stop()

    run(scenario)


async def _get(queue: aio_pika.abc.AbstractQueue, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            return message
        assert time.monotonic() < deadline, f"nothing arrived on {queue.name}"
        await asyncio.sleep(0.05)


def test_a_long_delay_never_blocks_a_short_one(url: str) -> None:
    async def scenario() -> None:
        adapter = RabbitMQAdapter(with_options(url, delay_tiers="0.1,3"))
        topic, group = unique("delay"), unique("g")
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group=group))
            await adapter.publish(topic, [ping(1), ping(2)])
            first = await next_delivery(subscription)
            second = await next_delivery(subscription)
            started = time.monotonic()
            await first.nack(delay=2.0)  # tier 3000 ms
            await second.nack(delay=0.05)  # tier 100 ms
            again = await next_delivery(subscription)
            assert again.envelope is not None and again.envelope.id == second.envelope.id
            assert again.attempt == 2
            await again.ack()
            late = await next_delivery(subscription)
            waited = time.monotonic() - started
            assert late.envelope is not None and late.envelope.id == first.envelope.id
            assert waited >= 2.0, f"a 2 s delay came back after {waited:.2f}s"
            assert late.attempt == 2
            await late.ack()
        finally:
            await adapter.close()

    run(scenario)


def test_reject_moves_the_message_to_the_group_dead_letter_queue(url: str) -> None:
    async def scenario() -> None:
        adapter = RabbitMQAdapter(url)
        topic, group = unique("reject"), unique("g")
        connection = await aio_pika.connect(url)
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group=group))
            sent = ping(3)
            await adapter.publish(topic, [sent])
            delivery = await next_delivery(subscription)
            await delivery.reject()
            channel = await connection.channel()
            parked = await channel.declare_queue(
                f"{topic}.{group}.dlq/eventbus-dlq-replay", passive=True
            )
            raw = await _get(parked)
            assert raw.headers["ce-id"] == sent.id
        finally:
            await connection.close()
            await adapter.close()

    run(scenario)


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_each_return_of_an_unsettled_message_counts_as_the_next_attempt(
    url: str, queue_type: str
) -> None:
    """A consumer that goes away without settling (to the broker, a process that died
    in the handler) gives the message back; each return counts, so the attempt is a real
    count across crashes (#18 defect 13): quorum queues by the broker's
    x-delivery-count, classic queues (which only flag ``redelivered``) by the adapter."""

    async def scenario() -> None:
        topic, group = unique("again"), unique("g")
        sent = ping(4)
        attempts = []
        for _ in range(4):  # a fresh adapter each time, as a restarted process has
            adapter = RabbitMQAdapter(with_options(url, queue_type=queue_type))
            try:
                subscription = await adapter.subscribe(topic, SubscribeOptions(group=group))
                if not attempts:
                    await adapter.publish(topic, [sent])
                delivery = await next_delivery(subscription)
                assert delivery.envelope == sent
                attempts.append(delivery.attempt)
            finally:
                await adapter.close()  # unsettled: the broker takes it back
        assert attempts == [1, 2, 3, 4]
        adapter = RabbitMQAdapter(with_options(url, queue_type=queue_type))
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group=group))
            last = await next_delivery(subscription)
            assert last.attempt == 5
            await last.ack()
            with pytest.raises(TimeoutError):  # no copy left behind
                await next_delivery(subscription, timeout=1.0)
        finally:
            await adapter.close()

    run(scenario)


def test_broker_side_channel_close_resumes_consumption(url: str) -> None:
    """A PRECONDITION_FAILED closes the consumer's channel; the robust channel comes
    back, the unsettled message is redelivered and new ones keep arriving."""

    async def scenario() -> None:
        adapter = RabbitMQAdapter(url)
        topic, group = unique("chclose"), unique("g")
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group=group))
            await adapter.publish(topic, [ping(5)])
            first = await next_delivery(subscription)
            # Fault injection: ack an unknown delivery tag -> the broker closes the channel.
            underlay = first._message.channel  # type: ignore[attr-defined]
            await underlay.basic_ack(delivery_tag=10**6)
            await first.ack()  # its channel is gone: a no-op, the broker redelivers it
            again = await next_delivery(subscription, timeout=20)
            assert again.envelope == first.envelope and again.attempt == 2
            assert first.stale and not again.stale  # the bus drops stale ones unrun
            await again.ack()
            await adapter.publish(topic, [ping(6)])
            later = await next_delivery(subscription)
            assert later.envelope is not None and later.envelope.data == b'{"n":6}'
            await later.ack()
        finally:
            await adapter.close()

    run(scenario)


def test_close_reaches_the_end_while_the_broker_is_unreachable(url: str) -> None:
    async def scenario() -> None:
        endpoint, proxy = harness.require_faulty("rabbitmq")
        adapter = RabbitMQAdapter(endpoint.url)
        topic, group = unique("closing"), unique("g")
        subscription = await adapter.subscribe(topic, SubscribeOptions(group=group))
        await adapter.publish(topic, [ping(7)])
        await next_delivery(subscription)
        await proxy.refuse_connections(4.0)
        started = time.monotonic()
        await adapter.close()
        took = time.monotonic() - started
        assert took < 3.5, f"close() took {took:.1f}s"
        # The proxy is shared by the session: let the refusal end before the next test.
        await asyncio.sleep(4.0 - took)

    run(scenario)


def test_connect_fails_fast_naming_the_masked_url() -> None:
    async def scenario() -> None:
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        adapter = RabbitMQAdapter(f"amqp://app:topsecret@127.0.0.1:{port}/?connect_timeout=2")
        started = time.monotonic()
        with pytest.raises(BrokerConnectionError) as info:
            await adapter.connect()
        assert time.monotonic() - started < 5
        assert f"127.0.0.1:{port}" in str(info.value) and "topsecret" not in str(info.value)
        await adapter.close()

    run(scenario)


def test_single_active_consumer_gives_the_group_one_consumer_at_a_time(url: str) -> None:
    async def scenario() -> None:
        adapter = RabbitMQAdapter(with_options(url, single_active_consumer="true"))
        topic, group = unique("sac"), unique("g")
        try:
            first = await adapter.subscribe(topic, SubscribeOptions(group=group))
            second = await adapter.subscribe(topic, SubscribeOptions(group=group))
            await adapter.publish(topic, [ping(n) for n in range(6)])
            got = [await next_delivery(first) for _ in range(6)]
            assert [d.envelope.data for d in got if d.envelope] == [
                b'{"n":%d}' % n for n in range(6)
            ]
            for delivery in got:
                await delivery.ack()
            with pytest.raises(TimeoutError):  # the standby consumer got nothing
                await next_delivery(second, timeout=0.5)
            await first.close()  # the standby takes over
            await adapter.publish(topic, [ping(9)])
            taken = await next_delivery(second)
            assert taken.envelope is not None and taken.envelope.data == b'{"n":9}'
            await taken.ack()
        finally:
            await adapter.close()

    run(scenario)


def test_changing_a_group_queue_type_is_a_configuration_error(url: str) -> None:
    async def scenario() -> None:
        topic, group = unique("mismatch"), unique("g")
        classic = RabbitMQAdapter(url)
        quorum = RabbitMQAdapter(with_options(url, queue_type="quorum"))
        try:
            await classic.subscribe(topic, SubscribeOptions(group=group))
            with pytest.raises(ConfigurationError, match="other arguments"):
                await quorum.subscribe(topic, SubscribeOptions(group=group))
        finally:
            await classic.close()
            await quorum.close()

    run(scenario)


def test_dead_letter_tooling_lists_and_replays_letters_nobody_listened_to(url: str) -> None:
    """Dead letters wait in the DLQ tooling's own queue from the group's first
    subscribe, so ``DeadLetters`` finds letters published before it ever ran."""

    async def scenario() -> None:
        topic, group = unique("dlqtool"), unique("g")
        adapter = RabbitMQAdapter(url)
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group=group))
            sent = ping(11)
            await adapter.publish(topic, [sent])
            await (await next_delivery(subscription)).reject()
            dead = DeadLetters(adapter, idle=1.0)
            letters = await dead.list(topic, group)
            assert [letter.envelope.id for letter in letters] == [sent.id]
            await dead.replay(topic, group)
            back = await next_delivery(subscription)
            assert back.envelope is not None and back.envelope.id == sent.id
            await back.ack()
        finally:
            await adapter.close()

    run(scenario)


def test_publish_to_group_reaches_that_group_alone(url: str) -> None:
    async def scenario() -> None:
        adapter = RabbitMQAdapter(url)
        topic, chosen, other = unique("togroup"), unique("g"), unique("g")
        try:
            mine = await adapter.subscribe(topic, SubscribeOptions(group=chosen))
            theirs = await adapter.subscribe(topic, SubscribeOptions(group=other))
            sent = ping(21)
            await adapter.publish_to_group(topic, chosen, [sent])
            got = await next_delivery(mine)
            assert got.envelope is not None and got.envelope.id == sent.id
            await got.ack()
            await adapter.publish(topic, [ping(22)])  # the other group sees only this
            seen = await next_delivery(theirs)
            assert seen.envelope is not None and seen.envelope.data == b'{"n":22}'
            await seen.ack()
            # A group that does not exist yet is declared, and keeps the message.
            later = unique("g")
            await adapter.publish_to_group(topic, later, [ping(23)])
            newcomer = await adapter.subscribe(topic, SubscribeOptions(group=later))
            kept = await next_delivery(newcomer)
            assert kept.envelope is not None and kept.envelope.data == b'{"n":23}'
            await kept.ack()
        finally:
            await adapter.close()

    run(scenario)


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_nack_after_a_redelivery_counts_on(url: str, queue_type: str) -> None:
    """Attempt 2 came back from the broker (a consumer went away); its nack parks attempt
    3, not the broker's count added twice (the copy must not carry the old
    x-delivery-count)."""

    async def scenario() -> None:
        topic, group = unique("nackagain"), unique("g")
        adapter = RabbitMQAdapter(with_options(url, queue_type=queue_type))
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group=group))
            await adapter.publish(topic, [ping(41)])
            assert (await next_delivery(subscription)).attempt == 1
            await subscription.close()  # unsettled: back to the broker
            subscription = await adapter.subscribe(topic, SubscribeOptions(group=group))
            second = await next_delivery(subscription)
            assert second.attempt == 2
            await second.nack(0)
            third = await next_delivery(subscription)
            assert third.attempt == 3
            await third.ack()
        finally:
            await adapter.close()

    run(scenario)
