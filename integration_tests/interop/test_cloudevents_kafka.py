"""The CloudEvents Kafka binding with the official SDK (``cloudevents.core.
bindings.kafka``), through a real Kafka broker, both ways, non-ASCII values
included (issue #21): the SDK's record produced with aiokafka is handled by
eventbus; eventbus's record, consumed with aiokafka, is read by the SDK.

The Kafka binding carries ``ce_`` header values as UTF-8 bytes (no
percent-encoding) and ``partitionkey`` as the record key.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from eventbus_kafka import KafkaSettings

from eventbus import Envelope, EventBus
from integration_tests import harness
from integration_tests.interop import cloudevents_peer as peer
from integration_tests.kafka.test_kafka_modes import _raw_records

pytestmark = [pytest.mark.broker("kafka"), pytest.mark.timeout(180)]


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_sdk_record_is_read_by_eventbus(kafka_endpoint: harness.Endpoint, mode: str) -> None:
    """Binary: ``ce_`` headers as UTF-8 bytes, ``content-type``, the data as the
    value. Structured: the JSON event format, ``application/cloudevents+json``."""
    url = harness.client_url(kafka_endpoint)
    topic, sent = peer.unique(f"interop-kafka-{mode}"), peer.sdk_event()
    write = ce_kafka.to_binary if mode == "binary" else ce_kafka.to_structured
    record = write(sent, JSONFormat())
    assert mode == "structured" or record.headers["ce_subject"] == peer.SUBJECT.encode()

    async def scenario() -> tuple[Envelope, peer.Order]:
        bootstrap = list(KafkaSettings.from_url(url).bootstrap_servers)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()

        async def send() -> None:
            headers = [(name, bytes(value)) for name, value in record.headers.items()]
            key = record.key.encode() if isinstance(record.key, str) else record.key
            await producer.send_and_wait(topic, record.value, key=key, headers=headers)

        try:
            return await peer.handled_by_eventbus(url, topic, send, timeout=60)
        finally:
            await producer.stop()

    envelope, event = peer.run(scenario, timeout=150)
    peer.assert_read_by_eventbus(envelope, event, sent)


def test_eventbus_record_is_read_by_the_sdk(kafka_endpoint: harness.Endpoint) -> None:
    url = harness.client_url(kafka_endpoint)
    topic = peer.unique("interop-kafka-eventbus")

    async def scenario() -> tuple[Envelope, Any]:
        bus = EventBus.from_url(url, source="interop")
        async with bus:
            sent = await peer.publish_sample(bus, topic)
        (record,) = await _raw_records(url, topic, 1)
        return sent, record

    sent, record = peer.run(scenario, timeout=150)
    event = ce_kafka.from_binary(
        ce_kafka.KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value),
        JSONFormat(),
    )
    peer.assert_read_by_sdk(event, sent)
