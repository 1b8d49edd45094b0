"""The idempotent producer: on by default where the broker has it, never hard-wired off.

Apache Kafka grants a producer id (InitProducerId); Tansu refuses it, and the
adapter then falls back, with a warning, unless told ``enable_idempotence=true``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from eventbus_kafka import KafkaAdapter

from eventbus.envelope import Envelope
from eventbus.errors import BrokerConnectionError
from integration_tests import harness

pytestmark = [pytest.mark.broker("kafka"), pytest.mark.timeout(120)]


def _url(endpoint: harness.Endpoint, option: str = "") -> str:
    url = harness.client_url(endpoint)
    if not option:
        return url
    return url + ("&" if "?" in url else "?") + option


async def _connect_and_publish(url: str) -> bool | None:
    adapter = KafkaAdapter(url)
    try:
        await adapter.connect()
        envelope = Envelope.create(type="test.idempotence", source="tests", data=b"{}")
        await adapter.publish(f"idem-{uuid.uuid4().hex[:10]}", [envelope])
        health = await adapter.health()
        assert health.info["idempotent_producer"] == str(adapter.idempotent).lower()
        return adapter.idempotent
    finally:
        await adapter.close()


def _apache() -> harness.Endpoint:
    endpoint, _ = harness.require_faulty("kafka", "apache")
    return endpoint


def _tansu() -> harness.Endpoint:
    endpoint, _ = harness.require_faulty("kafka", "tansu")
    return endpoint


def test_apache_kafka_gets_the_idempotent_producer_by_default() -> None:
    assert asyncio.run(_connect_and_publish(_url(_apache()))) is True


def test_idempotence_can_be_turned_off() -> None:
    assert asyncio.run(_connect_and_publish(_url(_apache(), "enable_idempotence=false"))) is False


def test_tansu_falls_back_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="eventbus.kafka"):
        assert asyncio.run(_connect_and_publish(_url(_tansu()))) is False
    assert any("no idempotent producer" in r.getMessage() for r in caplog.records)


def test_required_idempotence_on_a_broker_without_it_is_a_clear_error() -> None:
    with pytest.raises(BrokerConnectionError, match="refused the idempotent producer") as info:
        asyncio.run(_connect_and_publish(_url(_tansu(), "enable_idempotence=true")))
    assert "enable_idempotence=auto" in str(info.value)


def _skip_a_sequence_number(adapter: KafkaAdapter, topic: str) -> None:
    """What a batch that took a sequence number and never reached the log leaves behind
    (one that expired, or was refused, after it was sent: a broker restart under load
    does it): the producer numbers on past a gap the broker will not accept."""
    producer = adapter._producer
    assert producer is not None and producer._txn_manager is not None
    from aiokafka.structs import TopicPartition

    producer._txn_manager.increment_sequence_number(TopicPartition(topic, 0), 3)


def test_a_producer_the_broker_no_longer_accepts_is_replaced_and_nothing_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """aiokafka's idempotent producer never renumbers: after a gap in its sequence every
    later batch to the partition is refused (OutOfOrderSequenceNumber), for good. The
    adapter drops that producer and the bus's publish retry goes out through a new one
    (a new producer id, numbered from 0): the publish succeeds, and so do the next."""
    from eventbus import EventBus, Message

    topic = f"idem-gap-{uuid.uuid4().hex[:10]}"

    class Tick(Message):
        n: int

    async def main() -> list[int]:
        got: list[int] = []
        done = asyncio.Event()
        adapter = KafkaAdapter(_url(_apache(), "partitions=1"))
        bus = EventBus(adapter, source="tests", publish_timeout=30.0)

        @bus.subscribe(topic, group=f"g-{uuid.uuid4().hex[:8]}", start_from="earliest")
        async def handle(event: Tick) -> None:
            got.append(event.n)
            if len(got) == 3:
                done.set()

        async with bus:
            await bus.publish(Tick(n=1), topic=topic)
            first = adapter._producer
            _skip_a_sequence_number(adapter, topic)
            await bus.publish(Tick(n=2), topic=topic)
            await bus.publish(Tick(n=3), topic=topic)
            assert adapter._producer is not first, "the refused producer was kept"
            await asyncio.wait_for(done.wait(), 60)
        return got

    with caplog.at_level(logging.WARNING, logger="eventbus.kafka"):
        assert sorted(asyncio.run(main())) == [1, 2, 3]
    assert any("OutOfOrderSequenceNumber" in r.getMessage() for r in caplog.records)


def test_a_single_record_send_refused_for_its_producer_is_an_outage_then_goes_out() -> None:
    """The same through ``send_record`` (``publish_raw``, and a nack's re-publish to a
    retry topic): the refusal is a BrokerConnectionError, worth sending again, and the
    next send goes out through a new producer."""
    from eventbus.raw_message import RawMessage

    topic = f"idem-raw-{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        adapter = KafkaAdapter(_url(_apache(), "partitions=1"))
        try:
            await adapter.connect()
            await adapter.publish_raw(topic, RawMessage(b"one"))
            first = adapter._producer
            _skip_a_sequence_number(adapter, topic)
            with pytest.raises(BrokerConnectionError, match="OutOfOrderSequenceNumber"):
                await adapter.publish_raw(topic, RawMessage(b"two"))
            await adapter.publish_raw(topic, RawMessage(b"two"))
            assert adapter._producer is not first
        finally:
            await adapter.close()

    asyncio.run(main())
