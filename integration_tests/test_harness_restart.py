"""Brokers the harness starts itself can be restarted on the same port with their data.

The reliability cases (a broker going away mid-stream and coming back) rely on
this: a restart that silently wiped the data would make "nothing acknowledged
is lost" untestable. Each test writes with the official client, restarts the
process, and reads the write back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator

import pytest

from integration_tests.harness import processes
from integration_tests.harness.endpoints import required_brokers

pytestmark = pytest.mark.timeout(240)


def _started(
    name: str, start: Callable[[], processes.LocalProcess]
) -> Iterator[processes.LocalProcess]:
    try:
        proc = start()
    except (FileNotFoundError, processes.ProcessStartError) as exc:
        if name in required_brokers():
            pytest.fail(f"cannot start a private {name}: {exc}", pytrace=False)
        pytest.skip(f"cannot start a private {name}: {exc}")
    try:
        yield proc
    finally:
        proc.close()


@pytest.fixture
def redis_process() -> Iterator[processes.LocalProcess]:
    yield from _started("redis", processes.start_redis)


@pytest.fixture
def nats_process() -> Iterator[processes.LocalProcess]:
    yield from _started("nats", processes.start_nats)


@pytest.fixture
def rabbitmq_process() -> Iterator[processes.LocalProcess]:
    yield from _started("rabbitmq", processes.start_rabbitmq)


def test_redis_restart_keeps_acknowledged_writes(redis_process: processes.LocalProcess) -> None:
    import redis

    key, value = f"k-{uuid.uuid4().hex}", uuid.uuid4().hex
    client = redis.Redis.from_url(redis_process.url)
    try:
        client.xadd(key, {"v": value})
    finally:
        client.close()
    redis_process.restart()
    client = redis.Redis.from_url(redis_process.url)
    try:
        entries = client.xrange(key)
    finally:
        client.close()
    assert [fields[b"v"].decode() for _, fields in entries] == [value]


def test_nats_restart_keeps_jetstream_messages(nats_process: processes.LocalProcess) -> None:
    import nats

    stream, subject = f"S{uuid.uuid4().hex[:8]}", f"restart.{uuid.uuid4().hex[:8]}"
    payload = uuid.uuid4().bytes

    async def write() -> None:
        nc = await nats.connect(nats_process.url)
        try:
            js = nc.jetstream()
            await js.add_stream(name=stream, subjects=[subject])
            await js.publish(subject, payload)  # returns once the PubAck arrived
        finally:
            await nc.close()

    async def read() -> bytes:
        nc = await nats.connect(nats_process.url)
        try:
            message = await nc.jetstream().get_msg(stream, seq=1)
            return bytes(message.data or b"")
        finally:
            await nc.close()

    asyncio.run(write())
    nats_process.restart()
    assert asyncio.run(read()) == payload


def test_rabbitmq_restart_keeps_persistent_messages(
    rabbitmq_process: processes.LocalProcess,
) -> None:
    import aio_pika

    queue_name, body = f"restart-{uuid.uuid4().hex[:8]}", uuid.uuid4().bytes

    async def write() -> None:
        connection = await aio_pika.connect(rabbitmq_process.url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            await channel.declare_queue(queue_name, durable=True)
            message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
            await channel.default_exchange.publish(message, routing_key=queue_name)
        finally:
            await connection.close()

    async def read() -> bytes | None:
        connection = await aio_pika.connect(rabbitmq_process.url)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(queue_name, durable=True)
            message = await queue.get(fail=False)
            if message is None:
                return None
            await message.ack()
            return message.body
        finally:
            await connection.close()

    asyncio.run(write())
    rabbitmq_process.restart()
    assert asyncio.run(read()) == body
