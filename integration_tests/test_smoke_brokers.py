"""Each broker the harness finds does a real round trip with its official client.

These prove the harness, not eventbus: if one fails, the conformance suite's
failures on that broker are about the environment, not the adapter.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest

from integration_tests.harness import Endpoint, FaultProxy

pytestmark = pytest.mark.timeout(60)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def bootstrap(endpoint: Endpoint) -> str:
    return f"{endpoint.host}:{endpoint.port}"


async def kafka_roundtrip(endpoint: Endpoint, topic: str, value: bytes) -> bytes:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap(endpoint))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap(endpoint), acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, value, key=b"k")
    finally:
        await producer.stop()

    # Manual assignment skips the consumer-group join delay; groups are the
    # conformance suite's business.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap(endpoint), enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, sent.partition)
        consumer.assign([tp])
        consumer.seek(tp, sent.offset)
        record = await asyncio.wait_for(consumer.getone(), 20)
        assert record.value is not None
        return bytes(record.value)
    finally:
        await consumer.stop()


def test_kafka_roundtrip(kafka_endpoint: Endpoint) -> None:
    value = uuid.uuid4().bytes
    assert asyncio.run(kafka_roundtrip(kafka_endpoint, unique("smoke"), value)) == value


def test_rabbitmq_roundtrip(rabbitmq_endpoint: Endpoint) -> None:
    import aio_pika

    async def case() -> None:
        connection = await aio_pika.connect(rabbitmq_endpoint.url, timeout=10)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            queue = await channel.declare_queue(unique("smoke"), auto_delete=True)
            body = uuid.uuid4().bytes
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue.name)
            message = None
            deadline = time.monotonic() + 10
            while message is None:
                message = await queue.get(fail=False)
                if message is None:
                    assert time.monotonic() < deadline, "message never arrived"
                    await asyncio.sleep(0.05)
            await message.ack()
            assert message.body == body
            await queue.delete(if_unused=False, if_empty=False)

    asyncio.run(case())


def test_redis_roundtrip(redis_endpoint: Endpoint) -> None:
    import redis.asyncio as aioredis

    async def case() -> None:
        client = aioredis.Redis.from_url(redis_endpoint.url)
        stream = unique("smoke")
        try:
            entry_id = await client.xadd(stream, {"data": "hello"})
            read: Any = await client.xread({stream: "0-0"}, count=1, block=5000)
            [(_stream, [(got_id, fields)])] = read
            assert got_id == entry_id
            assert fields == {b"data": b"hello"}
        finally:
            await client.delete(stream)
            await client.aclose()

    asyncio.run(case())


def test_nats_jetstream_roundtrip(nats_endpoint: Endpoint) -> None:
    import nats

    async def case() -> None:
        nc = await nats.connect(nats_endpoint.url, connect_timeout=5)
        js = nc.jetstream()
        stream = unique("smoke").replace("-", "_")
        subject = f"{stream}.events"
        try:
            await js.add_stream(name=stream, subjects=[f"{stream}.>"])
            ack = await js.publish(subject, b"hello")
            assert ack.stream == stream
            sub = await js.pull_subscribe(subject, durable=f"{stream}_c")
            [msg] = await sub.fetch(1, timeout=5)
            await msg.ack()
            assert msg.data == b"hello"
        finally:
            await js.delete_stream(stream)
            await nc.close()

    asyncio.run(case())


def test_sqs_sns_roundtrip(sqs_endpoint: Endpoint) -> None:
    import boto3  # type: ignore[import-untyped]

    from integration_tests.harness.probes import aws_credentials, sqs_settings

    endpoint, region = sqs_settings(sqs_endpoint.url)
    options = {"endpoint_url": endpoint, "region_name": region, **aws_credentials()}
    sns = boto3.client("sns", **options)
    sqs = boto3.client("sqs", **options)
    name = unique("smoke")
    topic_arn = sns.create_topic(Name=name)["TopicArn"]
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    try:
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=queue_arn,
            Attributes={"RawMessageDelivery": "true"},
        )
        body = json.dumps({"id": uuid.uuid4().hex})
        sns.publish(TopicArn=topic_arn, Message=body)
        messages: list[dict[str, str]] = []
        deadline = time.monotonic() + 15
        while not messages and time.monotonic() < deadline:
            messages = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=1, WaitTimeSeconds=1
            ).get("Messages", [])
        assert messages, "no message reached the queue"
        assert messages[0]["Body"] == body  # raw delivery: no SNS JSON envelope
    finally:
        sqs.delete_queue(QueueUrl=queue_url)
        sns.delete_topic(TopicArn=topic_arn)


def test_faulty_kafka_reconnects_after_drop(faulty_kafka: tuple[Endpoint, FaultProxy]) -> None:
    from aiokafka import AIOKafkaProducer

    endpoint, proxy = faulty_kafka
    assert endpoint.restart is not None

    async def case() -> None:
        topic = unique("faulty")
        value = uuid.uuid4().bytes
        assert await kafka_roundtrip(endpoint, topic, value) == value

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap(endpoint), acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"before")
            # Metadata advertises the proxy, so the producer's connections are ours.
            assert proxy.open_connections > 0
            await proxy.drop_connections()
            sent = await asyncio.wait_for(producer.send_and_wait(topic, b"after"), 30)
            assert sent.offset >= 2
            assert proxy.open_connections > 0
        finally:
            await producer.stop()

    asyncio.run(case())
