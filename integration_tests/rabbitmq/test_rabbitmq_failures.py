"""The RabbitMQ adapter on its failure paths (#18): crashes, alarms, refusals, silent
endpoints, resources deleted underneath, foreign messages.

Node-wide settings (memory watermark, max_message_size) are changed only on the
private node of ``integration_tests/rabbitmq/node.py``, never on the shared broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import aiormq
import pytest
from eventbus_rabbitmq import RabbitMQAdapter

from eventbus import Context, Event, EventBus
from eventbus.adapter import SubscribeOptions
from eventbus.dlq import DeadLetters
from eventbus.errors import (
    BrokerConnectionError,
    ConfigurationError,
    MessageTooLargeError,
    TopicNotFoundError,
)
from integration_tests.rabbitmq import crash_consumer
from integration_tests.rabbitmq.node import Node
from integration_tests.rabbitmq.test_rabbitmq_adapter import (
    next_delivery,
    ping,
    run,
    unique,
    with_options,
)

pytestmark = [pytest.mark.broker("rabbitmq"), pytest.mark.timeout(180)]


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_message_that_kills_its_process_is_dead_lettered_after_max_attempts(
        rabbitmq_url: str, queue_type: str, tmp_path: Path) -> None:
    """Each consumer process dies in the handler (os._exit): the message comes back
    after every crash; after max_attempts runs the next process dead-letters it
    (RunsExhaustedError) without running it again (#18 defect 13)."""
    url = with_options(rabbitmq_url, queue_type=queue_type)
    topic, group = unique("crash"), unique("g")
    runs_log = tmp_path / "runs.log"

    class Boom(Event, type="tests.rabbitmq.crash.boom", topic=topic):
        n: int

    async def publish_one() -> None:
        adapter = RabbitMQAdapter(url)
        try:  # the group's queue exists before the event is published
            await (await adapter.subscribe(topic, SubscribeOptions(group=group))).close()
        finally:
            await adapter.close()
        async with EventBus.from_url(url, source="crash-tests", warn_after=None) as bus:
            await bus.publish(Boom(n=1))

    run(publish_one)
    exits = []
    for _ in range(crash_consumer.MAX_ATTEMPTS + 2):
        done = subprocess.run(
            [sys.executable, "-m", "integration_tests.rabbitmq.crash_consumer", url, topic,
             group, str(runs_log)], timeout=60, check=False)
        exits.append(done.returncode)
        if done.returncode == 0:
            break
    runs = runs_log.read_text().split()
    assert runs == [str(n) for n in range(1, crash_consumer.MAX_ATTEMPTS + 1)], (runs, exits)
    assert exits[-1] == 0, f"the last process still ran the handler: {exits}"

    async def dead_letters() -> None:
        adapter = RabbitMQAdapter(url)
        try:
            letters = await DeadLetters(adapter).list(topic, group)
        finally:
            await adapter.close()
        assert [letter.exception for letter in letters] == [
            "eventbus.errors.RunsExhaustedError"], letters
        assert letters[0].attempts == crash_consumer.MAX_ATTEMPTS

    run(dead_letters)


def test_connect_to_a_silent_endpoint_fails_in_time_and_close_returns() -> None:
    """A listener that accepts TCP and never speaks AMQP (#18 defect 16): connect()
    fails within connect_timeout with one line naming the masked URL, not forever,
    and leaves no reconnect task behind (the loop shuts down at once)."""

    async def scenario() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)  # held open, never answered

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            for options, bound in (("?connect_timeout=2", 2.0), ("", 5.0)):  # "" = default
                adapter = RabbitMQAdapter(f"amqp://app:topsecret@127.0.0.1:{port}/{options}")
                started = time.monotonic()
                with pytest.raises(BrokerConnectionError) as info:
                    await adapter.connect()
                took = time.monotonic() - started
                assert took < bound + 1.5, f"connect() gave up after {took:.1f}s"
                message = str(info.value)
                assert f"127.0.0.1:{port}" in message and "topsecret" not in message
                assert "\n" not in message
                started = time.monotonic()
                await adapter.close()
                assert time.monotonic() - started < 1.0
            assert accepted, "the test's listener was never reached"
            leftovers = [t for t in asyncio.all_tasks()
                         if "aio_pika" in repr(t) or "aiormq" in repr(t)]
            assert not leftovers, f"tasks left running after a failed connect: {leftovers}"
        finally:
            for writer in accepted:
                writer.close()
            server.close()

    run(scenario)


def test_a_dead_letter_list_of_a_typo_says_no_such_topic_and_creates_nothing(
        rabbitmq_url: str) -> None:
    """``DeadLetters.list`` (and ``eventbus dlq list``) of a topic or group that never
    dead-lettered anything: TopicNotFoundError, exit 8, and no exchange or queue left
    behind on the broker (#18 defect 17)."""
    topic, group = unique("typo"), unique("g")

    async def scenario() -> None:
        adapter = RabbitMQAdapter(rabbitmq_url)
        try:
            with pytest.raises(TopicNotFoundError, match="nothing was created"):
                await DeadLetters(adapter).list(topic, group)
        finally:
            await adapter.close()

    run(scenario)
    done = subprocess.run(
        [sys.executable, "-m", "eventbus", "dlq", "list", topic, group, "--url", rabbitmq_url],
        capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 8, (done.returncode, done.stdout, done.stderr)
    assert "no such dead-letter topic" in done.stderr + done.stdout

    async def nothing_created() -> None:
        connection = await aio_pika.connect(rabbitmq_url)
        try:
            for kind, name in (("exchange", f"{topic}.{group}.dlq"),
                               ("queue", f"{topic}.{group}.dlq/eventbus-dlq-replay")):
                channel = await connection.channel()
                with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                    if kind == "exchange":
                        await channel.declare_exchange(name, passive=True)
                    else:
                        await channel.declare_queue(name, passive=True)
        finally:
            await connection.close()

    run(nothing_created)


def test_a_replay_reaches_a_quorum_group_from_a_url_without_queue_type(
        rabbitmq_url: str) -> None:
    """``publish_to_group`` (what ``eventbus dlq replay`` uses) from a process whose URL
    lacks queue_type=quorum: the group's queue exists, so it is used as it is; where a
    declaration is refused for its arguments, the error is a ConfigurationError naming
    the queue and what to set, at once, never "connection down, publish again" (#18
    defect 15)."""

    async def scenario() -> None:
        topic, group = unique("replay"), unique("g")
        quorum = RabbitMQAdapter(with_options(rabbitmq_url, queue_type="quorum"))
        classic = RabbitMQAdapter(rabbitmq_url)
        connection = await aio_pika.connect(rabbitmq_url)
        try:
            subscription = await quorum.subscribe(topic, SubscribeOptions(group=group))
            sent = ping(31)
            await classic.publish_to_group(topic, group, [sent])
            got = await next_delivery(subscription)
            assert got.envelope is not None and got.envelope.id == sent.id
            await got.ack()
            await subscription.close()
            # The group's queue gone, its dead-letter queue still quorum: declaring the
            # group again as classic is refused for its arguments.
            channel = await connection.channel()
            await channel.queue_delete(f"{topic}/{group}")
            other = RabbitMQAdapter(rabbitmq_url)
            try:
                started = time.monotonic()
                with pytest.raises(ConfigurationError) as info:
                    await other.publish_to_group(topic, group, [ping(32)])
                assert time.monotonic() - started < 5
                message = str(info.value)
                assert "queue_type" in message and f"{topic}.{group}.dlq" in message, message
                assert "\n" not in message
            finally:
                await other.close()
        finally:
            await connection.close()
            await quorum.close()
            await classic.close()

    run(scenario)


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
        private_node: Node) -> None:
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
                    f"{len(drained)}/{backlog} drained during the alarm")
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
        bus = EventBus.from_url(url, source="svc", warn_after=None, shutdown_timeout=1,
                                start_timeout=20)
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
        private_node: Node) -> None:
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
