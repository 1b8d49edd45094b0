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


def _the_failure(error: Exception) -> Exception:
    """The one message's error of a publish that failed (a batch of one reports it in
    ``failures``)."""
    from eventbus.errors import BatchPublishError

    if isinstance(error, BatchPublishError):
        (only,) = error.failures.values()
        return only
    return error


def test_a_given_producer_refused_for_its_state_is_a_publish_error_not_an_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A producer given to the adapter (``client=``) is its owner's: the adapter cannot
    replace it, so publishing again through it is refused the same way for good. The
    refusal is a PublishError at once (a BrokerConnectionError would have the bus retry
    the same refused producer until ``publish_timeout``), logged at ERROR, and the
    producer is kept."""
    from aiokafka import AIOKafkaProducer
    from eventbus_kafka import KafkaSettings

    from eventbus import EventBus, Message
    from eventbus.errors import PublishError
    from eventbus.raw_message import RawMessage

    topic = f"idem-given-{uuid.uuid4().hex[:10]}"
    url = _url(_apache(), "partitions=1")

    class GivenTick(Message, type="test.idempotence.given"):
        n: int

    async def main() -> float:
        producer = AIOKafkaProducer(
            bootstrap_servers=list(KafkaSettings.from_url(url).bootstrap_servers),
            enable_idempotence=True,
        )
        await producer.start()
        try:
            adapter = KafkaAdapter(settings=KafkaSettings.from_url(url), client=producer)
            bus = EventBus(adapter, source="tests", publish_timeout=30.0)
            async with bus:
                await bus.publish(GivenTick(n=1), topic=topic)
                _skip_a_sequence_number(adapter, topic)
                started = asyncio.get_running_loop().time()
                with pytest.raises(PublishError) as info:
                    await bus.publish(GivenTick(n=2), topic=topic)
                took = asyncio.get_running_loop().time() - started
                refused = _the_failure(info.value)
                assert not isinstance(refused, BrokerConnectionError), refused
                assert "OutOfOrderSequenceNumber" in str(refused)
                assert "replace it" in str(refused)
                with pytest.raises(PublishError, match="OutOfOrderSequenceNumber") as raw:
                    await adapter.publish_raw(topic, RawMessage(b"three"))
                assert not isinstance(raw.value, BrokerConnectionError)
                assert adapter._producer is producer, "the given producer was dropped"
            return took
        finally:
            await producer.stop()

    with caplog.at_level(logging.ERROR, logger="eventbus.kafka"):
        took = asyncio.run(main())
    assert took < 10.0, f"the refused publish was retried for {took:.1f}s"
    assert any(
        r.levelno == logging.ERROR and "refused the producer given" in r.getMessage()
        for r in caplog.records
    )


def test_a_batch_refused_on_one_partition_fails_only_there_and_goes_out_again() -> None:
    """A batch whose records go to two partitions, one of them past a sequence gap: the
    records for that partition fail (worth publishing again, a BrokerConnectionError
    each), the others are confirmed, the producer is replaced, and republishing the
    failed ones through the adapter goes out."""
    from eventbus.errors import BatchPublishError

    topic = f"idem-part-{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        adapter = KafkaAdapter(_url(_apache(), "partitions=2"))
        try:
            await adapter.connect()
            envelopes = [
                Envelope.create(
                    type="test.idempotence", source="tests", data=b"{}", partitionkey=f"k{i}"
                )
                for i in range(40)
            ]
            await adapter.publish(topic, envelopes)  # both partitions have a sequence now
            first = adapter._producer
            _skip_a_sequence_number(adapter, topic)  # partition 0 only
            with pytest.raises(BatchPublishError) as info:
                await adapter.publish(topic, envelopes)
            failed = info.value.failures
            assert failed and len(failed) < len(envelopes), failed
            assert all(isinstance(e, BrokerConnectionError) for e in failed.values())
            assert adapter._producer is not first, "the refused producer was kept"
            await adapter.publish(topic, [envelopes[i] for i in failed])
        finally:
            await adapter.close()

    asyncio.run(main())


def test_close_right_after_a_producer_was_dropped_waits_for_it_to_stop() -> None:
    """``close()`` while a dropped producer is still stopping in the background: the
    adapter waits for it, so nothing of it is left running (no pending task)."""
    from eventbus.raw_message import RawMessage

    topic = f"idem-close-{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        adapter = KafkaAdapter(_url(_apache(), "partitions=1"))
        await adapter.connect()
        await adapter.publish_raw(topic, RawMessage(b"one"))
        dropped = adapter._producer
        assert dropped is not None
        _skip_a_sequence_number(adapter, topic)
        with pytest.raises(BrokerConnectionError):
            await adapter.publish_raw(topic, RawMessage(b"two"))
        assert adapter._retired, "the dropped producer is not stopping in the background"
        await adapter.close()
        assert not adapter._retired
        assert dropped._closed, "the dropped producer was left running"
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not others, others

    asyncio.run(main())
