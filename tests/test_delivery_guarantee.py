"""``subscribe(delivery=...)``: the broker's strongest guarantee by default, an explicit
one the broker lacks refused at ``subscribe()``; and the merged group-route subscription."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator

import pytest

from eventbus import (
    ConfigurationError,
    Context,
    EventBus,
    GuaranteeUnavailableError,
    MemoryAdapter,
    RetryPolicy,
)
from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.group_route import WithGroupRoute
from tests.bus_support import ChargeCard, Collector, OrderPlaced, dead_letters, memory_url, run


class NoRedelivery(MemoryAdapter):
    """The memory broker dressed as one that never redelivers (core NATS, Pub/Sub)."""

    stronger = "memory-plus:// (the durable one)"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.capabilities = dataclasses.replace(self.capabilities, redelivery=False)
        self.asked: list[SubscribeOptions] = []
        self.url = "memory://user:hunter2@broker"  # as a real URL would carry a password

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        self.asked.append(options)
        return await super().subscribe(topic, options)


async def _noop(event: OrderPlaced | ChargeCard) -> None: ...


def test_default_is_at_least_once_where_the_broker_redelivers() -> None:
    bus = EventBus(memory_url())
    bus.subscribe(OrderPlaced, group="g")(_noop)
    bus.subscribe(ChargeCard, delivery="at_least_once")(_noop)
    first, second = bus.subscriptions
    assert (first.delivery, first.guarantee, first.mode) == (None, "at_least_once", "at_least_once")
    assert (second.delivery, second.guarantee) == ("at_least_once", "at_least_once")


def test_explicit_at_least_once_refused_at_subscribe_on_a_broker_without_redelivery() -> None:
    bus = EventBus(NoRedelivery(memory_url()))
    with pytest.raises(GuaranteeUnavailableError) as raised:
        bus.subscribe(OrderPlaced, group="billing", delivery="at_least_once")(_noop)
    error = raised.value
    assert isinstance(error, ConfigurationError)
    assert (error.topic, error.instead) == ("test-bus-orders", NoRedelivery.stronger)
    text = str(error)
    for part in (
        "'test-bus-orders'",
        "'billing'",
        "NoRedelivery",
        "memory-plus://",
        "redelivery=False",
        "at_least_once",
    ):
        assert part in text, f"{part!r} missing from: {text}"
    assert "hunter2" not in text and "hunter2" not in error.broker
    assert not bus.subscriptions


def test_a_refused_command_does_not_claim_its_handler_group() -> None:
    bus = EventBus(NoRedelivery(memory_url()))
    with pytest.raises(GuaranteeUnavailableError):
        bus.subscribe(ChargeCard, group="one", delivery="at_least_once")(_noop)
    bus.subscribe(ChargeCard, group="two")(_noop)  # not "already has handler group 'one'"
    assert [s.group for s in bus.subscriptions] == ["two"]


def test_default_on_a_broker_without_redelivery_is_at_most_once_still_retried() -> None:
    """The default subscription there reports at-most-once, is logged so at start, and
    still retries a failing handler in process and dead-letters it."""

    async def scenario() -> None:
        url = memory_url()
        adapter = NoRedelivery(url)
        bus = EventBus(
            adapter,
            retry=RetryPolicy(
                max_attempts=2, in_process_attempts=2, initial_delay=0.001, jitter=0.0
            ),
        )
        attempts: Collector[int] = Collector()

        @bus.subscribe(OrderPlaced, group="g")
        async def fail(event: OrderPlaced, ctx: Context) -> None:
            attempts.add(ctx.attempt)
            raise RuntimeError("always")

        (spec,) = bus.subscriptions
        assert (spec.delivery, spec.guarantee, spec.mode) == (None, "at_most_once", "at_least_once")
        async with bus:
            await bus.publish(OrderPlaced(order_id="1"))
            await attempts.wait_count(2)
            (letter,) = await dead_letters(url, OrderPlaced.default_topic(), "g", 1)
            assert "always" in letter.extensions.get("dlqreason", "")
            (health,) = (await bus.health()).subscriptions
            assert health.delivery == "at_most_once"
        assert adapter.asked[0].delivery is None

    run(scenario)


def test_start_logs_the_guarantee(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        adapter = NoRedelivery(memory_url())
        bus = EventBus(adapter)
        bus.subscribe(OrderPlaced, group="g", delivery="at_most_once")(_noop)
        bus.subscribe(ChargeCard)(_noop)
        async with bus:
            pass
        # The adapter is told what was asked for, so it could refuse it too.
        assert sorted(map(str, (o.delivery for o in adapter.asked))) == ["None", "at_most_once"]

    with caplog.at_level(logging.INFO, logger="eventbus.runner"):
        run(scenario)
    lines = [r.getMessage() for r in caplog.records if "subscribed to" in r.getMessage()]
    assert any(
        "test-bus-orders" in line and line.endswith("delivery at_most_once") for line in lines
    ), lines
    assert any(
        "test-bus-charges" in line and "at_most_once (the broker's strongest)" in line
        for line in lines
    ), lines


def test_delivery_is_validated_and_compared_as_asked() -> None:
    bus = EventBus(memory_url())
    with pytest.raises(ConfigurationError, match="'at_least_once', 'at_most_once' or None"):
        bus.subscribe(OrderPlaced, delivery="exactly_once")  # type: ignore[arg-type]
    bus.subscribe(OrderPlaced, group="g")(_noop)

    async def other(event: OrderPlaced) -> None: ...

    with pytest.raises(ConfigurationError, match="delivery='at_most_once' \\(was None\\)"):
        bus.subscribe(OrderPlaced, group="g", delivery="at_most_once")(other)


# -- WithGroupRoute -----------------------------------------------------------------------


class _Fake(Delivery):
    async def _ack(self) -> None: ...
    async def _nack(self, delay: float) -> None: ...
    async def _reject(self) -> None: ...


class _Source(Subscription):
    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.items: asyncio.Queue[Delivery | Exception | None] = asyncio.Queue()
        self.closed = False

    def put(self, n: int) -> None:
        self.items.put_nowait(
            _Fake(topic=self.topic, group="g", envelope=None, message_id=f"{self.topic}/{n}")
        )

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while (item := await self.items.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item

    async def close(self) -> None:
        self.closed = True
        self.items.put_nowait(None)


def test_group_route_merges_both_sources_as_the_topic() -> None:
    async def scenario() -> None:
        main, route = _Source("orders"), _Source("route-of-g")
        merged = WithGroupRoute(main, route, "orders")
        got: list[tuple[str, str]] = []

        async def pump() -> None:
            async for delivery in merged:
                got.append((delivery.topic, delivery.message_id))

        task = asyncio.create_task(pump())
        route.put(1)  # the topic is idle: the route's message still comes out
        main.put(2)
        for _ in range(50):
            if len(got) == 2:
                break
            await asyncio.sleep(0.01)
        assert sorted(got) == [("orders", "orders/2"), ("orders", "route-of-g/1")]
        route.items.put_nowait(ConnectionError("route lost"))
        with pytest.raises(ConnectionError, match="route lost"):
            await asyncio.wait_for(task, 1)
        await merged.close()
        assert main.closed and route.closed

    run(scenario)
