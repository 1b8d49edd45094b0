"""Fetched ahead and given back unread spends no crash-loop budget.

A subscription's pull requests fill its buffer before anyone iterates it; closed
with a message still there, it naks it, and JetStream's ``num_delivered`` grows
although no handler ever saw that delivery. The bus takes each delivery it did not
see for a run (``eventbus.runs``), so ``Delivery.attempt`` must not count these:
the adapter records them (:mod:`eventbus.given_back`, process-wide) and takes them
off the server's count, and off the count a copy carried over at ``max_deliver``
takes along (``Eventbus-Delivered``).
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

import pytest
from eventbus_nats import NatsAdapter
from eventbus_nats.wire import ack_facts

from eventbus.adapter import SubscribeOptions, Subscription
from eventbus.envelope import Envelope
from integration_tests import harness
from integration_tests.nats.support import next_delivery, run, until

pytestmark = [pytest.mark.broker("nats"), pytest.mark.timeout(120)]

ROUNDS = 4


def fetched(subscription: Subscription) -> bool:
    """Something waits unread in the buffer of the topic's member (or of the route's,
    where a message carried over at ``max_deliver`` goes)."""
    merged: Any = subscription
    return any(member._ready for member in (merged.main, merged.route))


@pytest.mark.parametrize("max_deliver", [0, 3], ids=["unlimited", "max_deliver=3"])
def test_fetched_ahead_and_closed_unread_is_still_a_first_attempt(
    nats_endpoint: harness.Endpoint, max_deliver: int
) -> None:
    """One message fetched into the buffer of ``ROUNDS`` subscriptions in turn (each
    of a fresh adapter), each closed without iterating: the server counts
    ``ROUNDS + 1`` deliveries at the next one, yet its ``attempt`` is 1. With
    ``max_deliver=3`` it is carried over to the group's route on the way (twice),
    and the copy starts at attempt 1 too."""
    url = f"nats://{nats_endpoint.host}:{nats_endpoint.port}"
    if max_deliver:
        url += f"?max_deliver={max_deliver}"
    topic = f"nats-givenback-{uuid.uuid4().hex[:8]}"
    options = SubscribeOptions(group="g")

    async def fresh() -> tuple[NatsAdapter, Subscription]:
        adapter = NatsAdapter(url)
        await adapter.connect()
        return adapter, await adapter.subscribe(topic, options)

    async def scenario() -> None:
        adapter, subscription = await fresh()  # the group's consumer exists first
        sent = Envelope.create(type="t", source="s", data=b"{}")
        await adapter.publish(topic, [sent])
        for _ in range(ROUNDS):
            await until(partial(fetched, subscription), 10.0, "the message to be fetched ahead")
            await subscription.close()
            await adapter.close()
            adapter, subscription = await fresh()
        delivery = await next_delivery(subscription)
        assert delivery.envelope is not None and delivery.envelope.id == sent.id
        delivered = ack_facts(delivery._msg)[0]  # type: ignore[attr-defined]
        if max_deliver:
            route = adapter._routes.stream
            assert delivery.message_id.startswith(f"{route}/"), "it was never carried over"
        else:
            assert delivered == ROUNDS + 1, f"the server counted {delivered} deliveries"
        assert delivery.attempt == 1, (
            f"attempt {delivery.attempt}: deliveries given back unread were counted"
        )
        await delivery.ack()
        await subscription.close()
        await adapter.close()

    run(scenario())


@pytest.mark.parametrize("hook", [True, False], ids=["given_back_unread", "not_called"])
def test_a_delivery_pumped_and_never_taken_by_the_bus_is_still_a_first_attempt(
    nats_endpoint: harness.Endpoint, hook: bool
) -> None:
    """A delivery taken from the subscription (handed out, as ``WithGroupRoute``
    pumps it) and marked with ``given_back_unread()`` before its subscription
    closes (which naks it) comes to a fresh adapter's member at attempt 1; without
    the call the second delivery counts as a second attempt."""
    url = f"nats://{nats_endpoint.host}:{nats_endpoint.port}"
    topic = f"nats-givenback-{uuid.uuid4().hex[:8]}"
    options = SubscribeOptions(group="g")

    async def scenario() -> None:
        adapter = NatsAdapter(url)
        await adapter.connect()
        subscription = await adapter.subscribe(topic, options)
        sent = Envelope.create(type="t", source="s", data=b"{}")
        await adapter.publish(topic, [sent])
        pumped = await next_delivery(subscription)
        assert pumped.envelope is not None and pumped.envelope.id == sent.id
        assert pumped.attempt == 1
        if hook:
            pumped.given_back_unread()
        await subscription.close()
        assert pumped.settled == "nack" and pumped.stale
        await adapter.close()

        adapter = NatsAdapter(url)
        await adapter.connect()
        subscription = await adapter.subscribe(topic, options)
        again = await next_delivery(subscription)
        assert again.envelope is not None and again.envelope.id == sent.id
        assert ack_facts(again._msg)[0] == 2  # type: ignore[attr-defined]
        assert again.attempt == (1 if hook else 2)
        await again.ack()
        await subscription.close()
        await adapter.close()

    run(scenario())
