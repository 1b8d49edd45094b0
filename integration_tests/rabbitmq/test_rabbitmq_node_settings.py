"""The RabbitMQ adapter under node-wide conditions (#18): a memory alarm, a
max_message_size below the adapter's limit. Only on the private node of
``integration_tests/rabbitmq/node.py`` (``private_node``), never the shared broker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

import pytest
from eventbus_rabbitmq import RabbitMQAdapter

from eventbus import Context, Event, EventBus
from eventbus.adapter import SubscribeOptions
from eventbus.errors import MessageTooLargeError
from integration_tests.rabbitmq.node import Node
from integration_tests.rabbitmq.test_rabbitmq_adapter import run, unique, with_options

pytestmark = [pytest.mark.broker("rabbitmq"), pytest.mark.timeout(180)]


@contextlib.contextmanager
def memory_alarm(node: Node) -> Iterator[None]:
    """A memory alarm on the private node: the broker blocks every publishing connection."""
    assert node.ctl is not None
    node.ctl("set_vm_memory_high_watermark", "0")
    try:
        yield
    finally:
        node.ctl("set_vm_memory_high_watermark", "0.4")


def test_a_handler_publishing_during_a_memory_alarm_never_stops_other_consumers(
    private_node: Node,
) -> None:
    """During a memory alarm a handler's publish waits, but the other subscription's
    acks still flow and it drains its whole backlog (#18 defect 14): publishing and
    consuming do not share a connection."""
    url = with_options(private_node.direct_url or "", publish_timeout=60)
    tag = unique("alarm")

    class Relay(Event, type=f"tests.rabbitmq.{tag}.relay", topic=f"{tag}-relay"):
        n: int

    class Drain(Event, type=f"tests.rabbitmq.{tag}.drain", topic=f"{tag}-drain"):
        n: int

    class Out(Event, type=f"tests.rabbitmq.{tag}.out", topic=f"{tag}-out"):
        n: int

    backlog = 30

    async def scenario() -> None:
        setup = RabbitMQAdapter(url)
        try:
            for topic in (f"{tag}-relay", f"{tag}-drain", f"{tag}-out"):
                await (await setup.subscribe(topic, SubscribeOptions(group="g"))).close()
        finally:
            await setup.close()
        async with EventBus.from_url(url, source="setup", warn_after=None) as bus:
            await bus.publish(Relay(n=0))
            await bus.publish_many([Drain(n=i) for i in range(backlog)])
        bus = EventBus.from_url(url, source="svc", warn_after=None, shutdown_timeout=1)
        go = asyncio.Event()
        drained: list[int] = []
        all_drained = asyncio.Event()

        @bus.subscribe(Relay, group="g")
        async def relay(event: Relay, ctx: Context) -> None:
            await go.wait()
            await ctx.publish(Out(n=event.n))  # waits while the alarm lasts

        @bus.subscribe(Drain, group="g")
        async def drain(event: Drain) -> None:
            await go.wait()
            drained.append(event.n)
            if len(drained) == backlog:
                all_drained.set()

        await bus.start()
        try:
            with memory_alarm(private_node):
                go.set()
                await asyncio.sleep(0.5)  # the relay's publish is blocked now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(all_drained.wait(), 15)
                assert sorted(drained) == list(range(backlog)), (
                    f"{len(drained)}/{backlog} drained during the alarm"
                )
                # ... and every ack reached the broker: the queue is empty.
                probe = RabbitMQAdapter(url)
                try:
                    sub = await probe.subscribe(f"{tag}-drain", SubscribeOptions(group="g"))
                    assert await sub.backlog() == 0
                finally:
                    await probe.close()
        finally:
            await asyncio.wait_for(bus.stop(), 30)

    run(scenario, timeout=120)


def test_start_during_a_memory_alarm_returns(private_node: Node) -> None:
    """A service (re)starting during a memory alarm, whose first subscription's handler
    publishes at once: bus.start() returns, every subscription consuming (#18 defect 14)."""
    url = with_options(private_node.direct_url or "", publish_timeout=60)
    tag = unique("alarmstart")

    class Relay(Event, type=f"tests.rabbitmq.{tag}.relay", topic=f"{tag}-relay"):
        n: int

    class Other(Event, type=f"tests.rabbitmq.{tag}.other", topic=f"{tag}-other"):
        n: int

    class Out(Event, type=f"tests.rabbitmq.{tag}.out", topic=f"{tag}-out"):
        n: int

    async def scenario() -> None:
        setup = RabbitMQAdapter(url)
        try:
            for topic in (f"{tag}-relay", f"{tag}-other", f"{tag}-out"):
                await (await setup.subscribe(topic, SubscribeOptions(group="g"))).close()
        finally:
            await setup.close()
        async with EventBus.from_url(url, source="setup", warn_after=None) as bus:
            await bus.publish(Relay(n=0))  # waiting for the service
        bus = EventBus.from_url(
            url, source="svc", warn_after=None, shutdown_timeout=1, start_timeout=20
        )
        relayed = asyncio.Event()

        @bus.subscribe(Relay, group="g")
        async def relay(event: Relay, ctx: Context) -> None:
            relayed.set()
            await ctx.publish(Out(n=event.n))

        @bus.subscribe(Other, group="g")
        async def other(event: Other) -> None:
            pass

        try:
            with memory_alarm(private_node):
                started = time.monotonic()
                await asyncio.wait_for(bus.start(), 15)
                assert time.monotonic() - started < 15
                await asyncio.wait_for(relayed.wait(), 10)
        finally:
            await asyncio.wait_for(bus.stop(), 30)

    run(scenario, timeout=120)


def test_a_message_over_the_brokers_max_message_size_is_too_large_at_once(
    private_node: Node,
) -> None:
    """The broker's max_message_size below the adapter's max_message_bytes: its refusal
    is MessageTooLargeError at once through bus.publish (not a BrokerConnectionError
    after publish_timeout of retries), and the adapter refuses the next one over the
    broker's limit before sending (#18 defect 15)."""
    assert private_node.ctl is not None
    url = private_node.direct_url or ""
    topic = unique("big")

    class Big(Event, type="tests.rabbitmq.big", topic=topic):
        blob: str

    async def scenario() -> None:
        bus = EventBus.from_url(url, source="size-tests", warn_after=None, publish_timeout=20)
        async with bus:
            await (await bus.adapter.subscribe(topic, SubscribeOptions(group="g"))).close()
            for size in (150_000, 120_000):
                started = time.monotonic()
                with pytest.raises(MessageTooLargeError, match="100000"):
                    await bus.publish(Big(blob="b" * size))
                assert time.monotonic() - started < 3, f"{size}: refused after retries"
            assert bus.adapter.capabilities.max_message_bytes == 100_000
            await bus.publish(Big(blob="small"))  # the channel is back

    private_node.ctl("eval", "application:set_env(rabbit, max_message_size, 100000).")
    try:
        run(scenario)
    finally:
        private_node.ctl("eval", "application:set_env(rabbit, max_message_size, 134217728).")
