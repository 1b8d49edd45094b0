"""Structured mode on Kafka (``mode=structured``) and the lone-publish latency.

The codec cases need no broker; the rest run against the harness's broker.
Structured records are checked for interop with the official CloudEvents SDK
(``cloudevents.v1.kafka`` and the core binding), in both directions.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from cloudevents.core.bindings import kafka as core_kafka
from cloudevents.core.formats.json import JSONFormat
from eventbus_kafka import KafkaAdapter, KafkaSettings
from eventbus_kafka.codec import decode, encode

from eventbus.adapter import SubscribeOptions
from eventbus.codec import STRUCTURED_CONTENT_TYPE
from eventbus.envelope import Envelope
from eventbus.errors import InvalidURLError

try:  # cloudevents >= 2 keeps the classic API under cloudevents.v1
    from cloudevents.v1 import http as sdk_http
    from cloudevents.v1 import kafka as sdk_kafka
except ImportError:  # pragma: no cover - cloudevents 1.x
    from cloudevents import http as sdk_http  # type: ignore[no-redef,attr-defined]
    from cloudevents import kafka as sdk_kafka  # type: ignore[no-redef,attr-defined]

broker = pytest.mark.broker("kafka")


def run(scenario: Callable[[], Coroutine[Any, Any, None]], timeout: float = 90.0) -> None:
    asyncio.run(asyncio.wait_for(scenario(), timeout))


def with_options(url: str, **options: object) -> str:
    joiner = "&" if "?" in url else "?"
    return url + joiner + "&".join(f"{k}={v}" for k, v in options.items())


def order(n: int = 1, **attributes: Any) -> Envelope:
    attributes.setdefault("partitionkey", f"order-A-{n}")
    return Envelope.create(
        type="com.example.order.placed",
        source="https://example.com/orders",
        data=json.dumps(
            {"order": f"A-{n}", "note": "café"}, separators=(",", ":"), ensure_ascii=False
        ).encode(),
        subject=f"order/A-{n}",
        correlationid="corr-1",
        extensions={"tenant": "acme"},
        **attributes,
    )


# -- settings and codec (no broker) ------------------------------------------------------


def test_mode_defaults_to_binary_and_rejects_unknown_values() -> None:
    assert KafkaSettings.from_url("kafka://b").mode == "binary"
    assert KafkaSettings.from_url("kafka://b?mode=Structured").mode == "structured"
    with pytest.raises(InvalidURLError, match="mode"):
        KafkaSettings.from_url("kafka://b?mode=json")


def test_structured_record_is_one_json_value_with_only_a_content_type_header() -> None:
    sent = order()
    record = encode(sent, structured=True)
    assert record.headers == [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
    assert record.key == b"order-A-1"
    doc = json.loads(record.value)
    assert doc["id"] == sent.id and doc["data"] == {"order": "A-1", "note": "café"}
    assert doc["tenant"] == "acme" and doc["partitionkey"] == "order-A-1"
    assert record.size >= len(record.value) + len("content-type") + len(STRUCTURED_CONTENT_TYPE)
    got = decode(record.key, record.value, record.headers)
    assert got.error is None and got.envelope == sent


def test_our_structured_record_is_read_by_both_sdks() -> None:
    sent = order()
    record = encode(sent, structured=True)
    headers = dict(record.headers)
    legacy = sdk_kafka.from_structured(sdk_kafka.KafkaMessage(headers, record.key, record.value))
    assert legacy["id"] == sent.id and legacy["type"] == sent.type
    assert legacy["tenant"] == "acme" and legacy["partitionkey"] == "order-A-1"
    assert legacy.get_data() == {"order": "A-1", "note": "café"}
    core = core_kafka.from_structured(
        core_kafka.KafkaMessage(headers=headers, key=record.key, value=record.value), JSONFormat()
    )
    assert core.get_id() == sent.id and core.get_source() == sent.source
    assert core.get_data() == {"order": "A-1", "note": "café"}


def test_sdk_structured_record_is_read_as_the_same_event() -> None:
    event = sdk_http.CloudEvent(
        {
            "type": "com.example.sdk",
            "source": "/sdk",
            "id": "sdk-1",
            "subject": "s",
            "partitionkey": "k-1",
        },
        {"n": 1},
    )
    message = sdk_kafka.to_structured(event)
    headers = list(message.headers.items())
    got = decode(message.key, message.value, headers)
    assert got.error is None and got.envelope is not None, got.error
    envelope = got.envelope
    assert (envelope.id, envelope.type, envelope.source, envelope.subject) == (
        "sdk-1",
        "com.example.sdk",
        "/sdk",
        "s",
    )
    assert envelope.partitionkey == "k-1"
    assert json.loads(envelope.data) == {"n": 1}


# -- against the broker --------------------------------------------------------------------


async def _raw_records(url: str, topic: str, n: int) -> list[Any]:
    """The first ``n`` records of ``topic`` as a plain aiokafka consumer sees them."""
    bootstrap = KafkaSettings.from_url(url).bootstrap_servers
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=list(bootstrap),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        records: list[Any] = []
        while len(records) < n:
            batch = await consumer.getmany(timeout_ms=1000)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


@broker
@pytest.mark.timeout(120)
def test_structured_mode_round_trip_and_wire_form(kafka_url: str) -> None:
    async def scenario() -> None:
        publisher = KafkaAdapter(with_options(kafka_url, mode="structured"))
        reader = KafkaAdapter(kafka_url)  # binary by setting; reads both modes
        topic, group = f"structured-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
        subscription = await reader.subscribe(topic, SubscribeOptions(group=group))
        sent = [order(1), order(2)]
        await publisher.publish(topic, sent)
        got: list[Envelope] = []
        async with asyncio.timeout(30):
            async for delivery in subscription:
                assert delivery.envelope is not None, delivery.decode_error
                got.append(delivery.envelope)
                await delivery.ack()
                if len(got) == len(sent):
                    break
        assert sorted(got, key=lambda e: e.id) == sorted(sent, key=lambda e: e.id)
        records = await _raw_records(kafka_url, topic, 2)
        for record in records:
            assert list(record.headers) == [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
            assert record.key in (b"order-A-1", b"order-A-2")
            assert json.loads(record.value)["specversion"] == "1.0"
        await subscription.close()
        await reader.close()
        await publisher.close()

    run(scenario)


@broker
@pytest.mark.timeout(120)
def test_lone_publish_does_not_wait_for_linger(kafka_url: str) -> None:
    """A publish with nothing else in flight is sent at once, not after ``linger``."""

    async def scenario() -> None:
        adapter = KafkaAdapter(with_options(kafka_url, linger=3))
        topic = f"lone-{uuid.uuid4().hex[:10]}"
        await adapter.publish(topic, [order(0)])  # creates the topic, warms metadata
        for n in range(3):
            started = time.perf_counter()
            await adapter.publish(topic, [order(n)])
            elapsed = time.perf_counter() - started
            assert elapsed < 1.0, f"lone publish took {elapsed:.3f}s with linger=3"
        # Concurrent publishes still all go through (they may share batches).
        await asyncio.gather(*(adapter.publish(topic, [order(n)]) for n in range(10)))
        await adapter.close()

    run(scenario)


@broker
@pytest.mark.timeout(120)
def test_large_publish_keeps_keys_on_their_partition_in_order(kafka_url: str) -> None:
    """A publish of many records goes out as whole batches (eventbus_kafka.publish):
    keyed records land where a small, record-by-record publish puts the same key,
    in order; unkeyed ones are spread over the partitions."""

    async def scenario() -> None:
        adapter = KafkaAdapter(with_options(kafka_url, partitions=4))
        topic = f"batched-{uuid.uuid4().hex[:10]}"
        keys = [f"key-{k}" for k in range(6)]
        small = [order(k, partitionkey=key) for k, key in enumerate(keys)]
        await adapter.publish(topic, small)  # under BATCH_MIN: send() per record
        big = [order(100 + i, partitionkey=keys[i % len(keys)]) for i in range(300)]
        unkeyed = [order(1000 + i, partitionkey=None) for i in range(200)]
        await asyncio.gather(adapter.publish(topic, big), adapter.publish(topic, unkeyed))
        records = await _raw_records(kafka_url, topic, len(small) + len(big) + len(unkeyed))
        where: dict[bytes | None, set[int]] = {}
        for record in records:
            where.setdefault(record.key, set()).add(record.partition)
        for key in keys:
            assert len(where[key.encode()]) == 1, f"{key} spread over {where[key.encode()]}"
        assert len(where[None]) > 1, "unkeyed records all went to one partition"
        for key in keys:
            subjects = [
                json.loads(r.value)["order"]
                for r in records
                if r.key == key.encode() and int(json.loads(r.value)["order"][2:]) >= 100
            ]
            numbers = [int(s[2:]) for s in subjects]
            assert numbers == sorted(numbers), f"{key} out of order: {numbers}"
        await adapter.close()

    run(scenario)
