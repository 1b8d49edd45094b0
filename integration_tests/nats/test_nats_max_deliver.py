"""``max_deliver`` never drops a message (issue #18, defect 3).

The server stops delivering a message after ``max_deliver`` deliveries, whether
or not the handler ran: an idempotency-store outage (deliveries bounced without
a run), or crashes, would use them up and the message would vanish, never
handled, never dead-lettered. The adapter carries a message reaching its last
delivery over to a fresh copy on the group's route (the other groups never see
it), with its delivery count in a header, so ``Delivery.attempt`` keeps counting
across copies and the bus's retry budget (not the server) decides when to give up.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from eventbus_nats import NatsAdapter

from eventbus import Context, Event, EventBus
from eventbus.adapter import SubscribeOptions
from eventbus.backoff import Backoff
from eventbus.deadletters import dlq_topic
from eventbus.envelope import Envelope
from eventbus.errors import IdempotencyStoreError
from eventbus.middleware.idempotency import ClaimResult, MemoryIdempotencyStore
from eventbus.middleware.retry import RetryPolicy
from integration_tests import harness
from integration_tests.nats.support import next_delivery, run

pytestmark = [pytest.mark.broker("nats"), pytest.mark.timeout(120)]


class FlakyStore(MemoryIdempotencyStore):
    """An idempotency store whose first ``outage`` claims fail (the store is down)."""

    def __init__(self, outage: int) -> None:
        super().__init__()
        self.outage = outage
        self.claims = 0

    async def claim(self, key: str, lease: float) -> ClaimResult:
        self.claims += 1
        if self.claims <= self.outage:
            raise IdempotencyStoreError(f"store unreachable (claim {self.claims}, injected)")
        return await super().claim(key, lease)


def test_store_outage_longer_than_max_deliver_ends_handled_once(
    nats_endpoint: harness.Endpoint,
) -> None:
    """max_deliver=3 above max_attempts=2, as the docs advise, and a store failing
    the first 7 claims: the message is handled once when the store answers, not
    dead-lettered, not dropped; the handler sees the real delivery count."""
    address = f"{nats_endpoint.host}:{nats_endpoint.port}"
    topic = f"nats.maxdeliver.{uuid.uuid4().hex[:8]}"

    class Pay(Event, type=f"test.{topic}", topic=topic):
        n: int

    async def scenario() -> None:
        store = FlakyStore(outage=7)
        bus = EventBus.from_url(
            f"nats://{address}?max_deliver=3",
            source="t",
            retry=RetryPolicy(max_attempts=2),
            redelivery_backoff=Backoff(initial=0.05, max_delay=0.2, jitter=0.0),
        )
        handled: list[tuple[int, int]] = []
        letters: list[Envelope] = []
        done = asyncio.Event()

        @bus.subscribe(Pay, group="billing", idempotency=store)
        async def pay(event: Pay, ctx: Context) -> None:
            handled.append((event.n, ctx.delivery.attempt))
            done.set()

        @bus.subscribe(dlq_topic(topic, "billing"), group="watch")
        async def watch(envelope: Envelope) -> None:
            letters.append(envelope)

        async with bus:
            await bus.publish(Pay(n=1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), 30)
            await asyncio.sleep(1.0)
        assert handled == [(1, 8)], f"handled {handled} after {store.claims} claims"
        assert not letters

    run(scenario())


def test_a_message_never_settled_keeps_coming_back_past_max_deliver(
    nats_endpoint: harness.Endpoint,
) -> None:
    """Nacked at every delivery (as a crashing consumer leaves it): with
    max_deliver=2 it still comes back, attempt after attempt, on this group only."""
    url = f"nats://{nats_endpoint.host}:{nats_endpoint.port}?max_deliver=2"
    topic = f"nats-maxdeliver-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        adapter = NatsAdapter(url)
        await adapter.connect()
        mine = await adapter.subscribe(topic, SubscribeOptions(group="g"))
        other = await adapter.subscribe(topic, SubscribeOptions(group="h"))
        sent = Envelope.create(type="t", source="s", data=b"{}")
        await adapter.publish(topic, [sent])
        theirs = await next_delivery(other)
        await theirs.ack()
        attempts = []
        for _ in range(5):
            delivery = await next_delivery(mine)
            assert delivery.envelope is not None and delivery.envelope.id == sent.id
            attempts.append(delivery.attempt)
            await delivery.nack()
        assert attempts == [1, 2, 3, 4, 5]
        with pytest.raises(TimeoutError):
            await next_delivery(other, timeout=1.0)
        await adapter.close()

    run(scenario())
