"""The RabbitMQ adapter on its failure paths (#18): crashes, refusals, silent and
frozen endpoints, queues deleted underneath, foreign messages. (Node-wide conditions,
a memory alarm or a low max_message_size: test_rabbitmq_node_settings.py.)"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import aiormq
import pytest
from eventbus_rabbitmq import RabbitMQAdapter

from eventbus import Event, EventBus
from eventbus.adapter import RawMessage, SubscribeOptions
from eventbus.deadletters import DeadLetters
from eventbus.errors import BrokerConnectionError, ConfigurationError, TopicNotFoundError
from eventbus.testing.faultproxy import FaultProxy
from integration_tests.rabbitmq import crash_consumer
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
    rabbitmq_url: str, queue_type: str, tmp_path: Path
) -> None:
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
            [
                sys.executable,
                "-m",
                "integration_tests.rabbitmq.crash_consumer",
                url,
                topic,
                group,
                str(runs_log),
            ],
            timeout=60,
            check=False,
        )
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
        assert [letter.exception for letter in letters] == ["eventbus.errors.RunsExhaustedError"], (
            letters
        )
        assert letters[0].attempts == crash_consumer.MAX_ATTEMPTS

    run(dead_letters)


def test_eventbus_publish_to_a_silent_endpoint_exits_within_its_bounds(tmp_path: Path) -> None:
    """The CLI side of #18 defect 16: ``eventbus publish`` to a listener that accepts TCP
    and never speaks AMQP used to hang past its publish_timeout; it exits non-zero within
    connect_timeout with one line naming the masked URL."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    port = listener.getsockname()[1]
    try:
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "eventbus",
                "publish",
                "orders",
                "--type",
                "order.placed",
                "--data",
                "{}",
                "--url",
                f"amqp://app:topsecret@127.0.0.1:{port}/?connect_timeout=2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        took = time.monotonic() - started
    finally:
        listener.close()
    assert done.returncode != 0, done.stdout
    assert took < 15, f"eventbus publish took {took:.1f}s to give up"
    assert f"127.0.0.1:{port}" in done.stderr and "topsecret" not in done.stderr, done.stderr


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
            leftovers = [
                t for t in asyncio.all_tasks() if "aio_pika" in repr(t) or "aiormq" in repr(t)
            ]
            assert not leftovers, f"tasks left running after a failed connect: {leftovers}"
        finally:
            for writer in accepted:
                writer.close()
            server.close()

    run(scenario)


def test_a_dead_letter_list_of_a_typo_says_no_such_topic_and_creates_nothing(
    rabbitmq_url: str,
) -> None:
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
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 8, (done.returncode, done.stdout, done.stderr)
    assert "no such dead-letter topic" in done.stderr + done.stdout

    async def nothing_created() -> None:
        connection = await aio_pika.connect(rabbitmq_url)
        try:
            for kind, name in (
                ("exchange", f"{topic}.{group}.dlq"),
                ("queue", f"{topic}.{group}.dlq/eventbus-dlq-replay"),
            ):
                channel = await connection.channel()
                with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
                    if kind == "exchange":
                        await channel.declare_exchange(name, passive=True)
                    else:
                        await channel.declare_queue(name, passive=True)
        finally:
            await connection.close()

    run(nothing_created)


def test_a_replay_reaches_a_quorum_group_from_a_url_without_queue_type(rabbitmq_url: str) -> None:
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


def test_a_connection_frozen_past_the_half_open_bound_is_replaced(rabbitmq_url: str) -> None:
    """A path that stops forwarding without closing: health() is false at once (a round
    trip on each connection), the adapter gives the silent connection up and dials again
    within its declared half_open_bound (missed heartbeats), and after the thaw the
    subscription consumes again."""
    parts = urlsplit(rabbitmq_url)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 5672).start()
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/?heartbeat=2"
    topic = unique("frozen")

    class Tick(Event, type="tests.rabbitmq.frozen.tick", topic=topic):
        n: int

    async def scenario() -> None:
        bus = EventBus.from_url(
            url, source="frozen-tests", warn_after=None, stall_after=None, shutdown_timeout=1
        )
        got: asyncio.Queue[int] = asyncio.Queue()

        @bus.subscribe(Tick, group="g")
        async def handle(event: Tick) -> None:
            got.put_nowait(event.n)

        await bus.start()
        bound = bus.adapter.capabilities.half_open_bound
        assert bound == 10.0  # (2 + 1) * 3 s without a frame, looked at every second
        try:
            await bus.publish(Tick(n=1))
            assert await asyncio.wait_for(got.get(), 10) == 1
            before = proxy.open_connections
            frozen_at = time.monotonic()
            await proxy.freeze()
            health = await bus.health()
            assert not health.ok and time.monotonic() - frozen_at < 3, health
            while proxy.open_connections <= before:  # a new dial: it gave the old one up
                assert time.monotonic() - frozen_at < bound + 3, (
                    f"no reconnect within {bound:g}s of a frozen connection"
                )
                await asyncio.sleep(0.2)
            await proxy.thaw()
            async with EventBus.from_url(rabbitmq_url, source="frozen-tests") as publisher:
                await publisher.publish(Tick(n=2))
            assert await asyncio.wait_for(got.get(), 30) == 2
            assert (await bus.health()).ok
        finally:
            await proxy.thaw()
            await asyncio.wait_for(bus.stop(), 30)

    try:
        run(scenario, timeout=90)
    finally:
        proxy.stop()


def test_backlog_counts_the_ready_messages_of_the_group_queue(rabbitmq_url: str) -> None:
    """backlog(): messages the queue could deliver now, not those delivered and
    unacknowledged; TopicNotFoundError once the queue is deleted; None with
    single_active_consumer (a standby consumer is idle by design)."""

    async def scenario() -> None:
        topic, group = unique("backlog"), unique("g")
        adapter = RabbitMQAdapter(rabbitmq_url)
        standby = RabbitMQAdapter(with_options(rabbitmq_url, single_active_consumer="true"))
        connection = await aio_pika.connect(rabbitmq_url)
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group=group, prefetch=1))
            assert await subscription.backlog() == 0
            await adapter.publish(topic, [ping(n) for n in range(3)])
            first = await next_delivery(subscription)  # 1 in flight (prefetch 1), 2 ready
            deadline = time.monotonic() + 5
            while (depth := await subscription.backlog()) != 2:
                assert time.monotonic() < deadline, f"backlog {depth}, expected 2"
                await asyncio.sleep(0.1)
            await first.ack()
            channel = await connection.channel()
            await channel.queue_delete(f"{topic}/{group}")
            with pytest.raises(TopicNotFoundError, match="deleted"):
                await subscription.backlog()
            sac = await standby.subscribe(unique("sac"), SubscribeOptions(group=group))
            assert await sac.backlog() is None
        finally:
            await connection.close()
            await adapter.close()
            await standby.close()

    run(scenario)


def test_a_group_queue_deleted_underneath_is_declared_again(rabbitmq_url: str) -> None:
    """The group's queue deleted while subscribed (the broker cancels the consumer): it
    is declared and consumed again, and an event published right after the deletion
    (returned unroutable for a moment) is sent again and handled, not lost or refused."""
    topic = unique("deleted")

    class Note(Event, type="tests.rabbitmq.deleted.note", topic=topic):
        n: int

    async def scenario() -> None:
        bus = EventBus.from_url(
            rabbitmq_url, source="deleted-tests", warn_after=None, stall_after=None
        )  # the adapter alone, no stall watch
        got: asyncio.Queue[int] = asyncio.Queue()

        @bus.subscribe(Note, group="g")
        async def handle(event: Note) -> None:
            got.put_nowait(event.n)

        connection = await aio_pika.connect(rabbitmq_url)
        async with bus:
            await bus.publish(Note(n=1))
            assert await asyncio.wait_for(got.get(), 10) == 1
            channel = await connection.channel()
            await channel.queue_delete(f"{topic}/g")
            await bus.publish(Note(n=2))
            assert await asyncio.wait_for(got.get(), 10) == 2
            assert (await bus.health()).ok
        await connection.close()

    run(scenario)


def test_a_foreign_message_keeps_its_headers_and_id_and_replays_as_it_came(
    rabbitmq_url: str,
) -> None:
    """publish_raw's headers are AMQP headers (text as long strings, other bytes as byte
    arrays, content-type the property); an undecodable delivery gives them back as
    raw_headers (no broker or adapter transport headers among them, its message
    properties such as message_id beside them) with the producer's message id, so its
    dead letter replays the message as it arrived."""

    async def scenario() -> None:
        topic, group = unique("foreign"), unique("g")
        adapter = RabbitMQAdapter(rabbitmq_url)
        connection = await aio_pika.connect(rabbitmq_url)
        try:
            subscription = await adapter.subscribe(topic, SubscribeOptions(group=group))
            headers = {
                "x-trace": b"\xff\x00\xfe",
                "x-kind": b"order-created",
                "content-type": b"text/plain",
            }
            await adapter.publish_raw(topic, RawMessage(b"\x00not an event", headers))
            mine = await next_delivery(subscription)
            assert mine.envelope is None and mine.raw == b"\x00not an event"
            # The message properties a producer sets come beside its headers (#21):
            # aio-pika gives every message a message_id.
            assert mine.message_id
            assert mine.raw_headers == {**headers, "message_id": mine.message_id.encode()}
            await mine.ack()
            channel = await connection.channel()  # a foreign producer, with its own id
            exchange = await channel.get_exchange(topic)
            await exchange.publish(
                aio_pika.Message(b"legacy", headers={"x-v": 2}, message_id="legacy-7"),
                routing_key="k",
            )
            theirs = await next_delivery(subscription)
            kept = {"x-v": b"2", "message_id": b"legacy-7"}
            assert theirs.message_id == "legacy-7" and theirs.raw_headers == kept
            await subscription.close()  # unsettled: a classic redelivery is counted ...
            subscription = await adapter.subscribe(topic, SubscribeOptions(group=group))
            again = await next_delivery(subscription)
            assert again.attempt == 2  # ... on the message, yet not among its headers
            assert again.raw_headers == kept and again.message_id == "legacy-7"
            await again.ack()
        finally:
            await connection.close()
            await adapter.close()

    run(scenario)
