"""Messages a subscription fetched ahead and gave back unread, against the real broker.

A quorum queue's ``x-delivery-count`` grows each time a consumer's channel closes
holding a message, whether or not anyone read it, and a classic queue flags the message
redelivered (which the adapter counts on the message itself); ``Delivery.attempt`` must
not take such returns for runs of the handler (:mod:`eventbus.given_back`).
"""

from __future__ import annotations

import asyncio

import pytest
from eventbus_rabbitmq import RabbitMQAdapter

from eventbus.adapter import SubscribeOptions, Subscription
from integration_tests.rabbitmq.test_rabbitmq_adapter import (
    next_delivery,
    ping,
    run,
    unique,
    with_options,
)

pytestmark = [pytest.mark.broker("rabbitmq"), pytest.mark.timeout(120)]


async def fetched_ahead(subscription: Subscription, timeout: float = 15.0) -> None:
    """Return once the broker has handed every ready message of the group's queue to a
    consumer (none left ready), that is to ``subscription``'s buffer."""
    async with asyncio.timeout(timeout):
        while await subscription.backlog():  # noqa: ASYNC110 - the broker signals nothing
            await asyncio.sleep(0.05)
        # One more round trip on the consuming connection, behind the deliveries.
        await subscription.backlog()


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_messages_given_back_unread_are_not_counted_as_runs(
    rabbitmq_url: str, queue_type: str
) -> None:
    """Subscriptions closed (each with its own adapter, as buses stopping one after
    another) while holding prefetched messages nobody read give them back; the broker
    counts (quorum) or flags (classic) each return, yet the next delivery of each is
    still attempt 1."""
    url = with_options(rabbitmq_url, queue_type=queue_type)
    returns = 4  # more than the default max_attempts (3)

    async def scenario() -> None:
        topic, group = unique("unread"), unique("g")
        sent = [ping(n) for n in range(3)]
        adapter = RabbitMQAdapter(url)
        try:  # the group's queue, then the messages: none delivered yet
            await (await adapter.subscribe(topic, SubscribeOptions(group=group))).close()
            await adapter.publish(topic, sent)
        finally:
            await adapter.close()
        for _ in range(returns):
            adapter = RabbitMQAdapter(url)
            try:
                subscription = await adapter.subscribe(topic, SubscribeOptions(group=group))
                await fetched_ahead(subscription)
                await subscription.close()  # unread: back to the broker
            finally:
                await adapter.close()
        adapter = RabbitMQAdapter(url)
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group=group))
            deliveries = [await next_delivery(subscription) for _ in sent]
            assert sorted(d.envelope.id for d in deliveries if d.envelope) == sorted(
                e.id for e in sent
            )
            attempts = [d.attempt for d in deliveries]
            assert attempts == [1, 1, 1], f"given back unread, counted as runs: {attempts}"
            for delivery in deliveries:
                await delivery.ack()
        finally:
            await adapter.close()

    run(scenario)


def test_a_settled_message_leaves_no_give_back_to_a_later_copy(rabbitmq_url: str) -> None:
    """Given back unread once, then nacked (the adapter parks a copy, whose quorum count
    starts anew, and acks the original): a crash of the copy's run counts in full, the
    earlier give-back is not taken off it."""
    url = with_options(rabbitmq_url, queue_type="quorum")

    async def scenario() -> None:
        topic, group = unique("settled"), unique("g")
        options = SubscribeOptions(group=group)
        adapter = RabbitMQAdapter(url)
        try:
            await (await adapter.subscribe(topic, options)).close()
            await adapter.publish(topic, [ping(1)])
            unread = await adapter.subscribe(topic, options)
            await fetched_ahead(unread)
            await unread.close()  # given back unread: no run
        finally:
            await adapter.close()
        adapter = RabbitMQAdapter(url)
        try:
            subscription = await adapter.subscribe(topic, options)
            first = await next_delivery(subscription)
            assert first.attempt == 1
            await first.nack()  # a failed run: a copy parked as attempt 2
            copy = await next_delivery(subscription)
            assert copy.attempt == 2
            await subscription.close()  # the copy's run ends with its process
        finally:
            await adapter.close()
        adapter = RabbitMQAdapter(url)
        try:
            again = await next_delivery(await adapter.subscribe(topic, options))
            assert again.attempt == 3, (
                f"attempt {again.attempt}: the give-back of the settled original was taken "
                "off the copy's count"
            )
            await again.ack()
        finally:
            await adapter.close()

    run(scenario)
