"""Runs of a record are counted across crashes (#18, the crash-loop failure class).

Kafka keeps no delivery count. A member that dies while running a record (no
settle, no commit past it) leaves the record at the group's committed offset, and
the next member reads it again; ``Delivery.attempt`` must say how many runs there
were, so the bus's crash-loop budget can dead-letter it instead of running it
forever. Here a subscription that is closed without settling stands for the crash
(the conformance case ``test_crash_loop_dead_lettered_after_max_attempts`` kills
real processes).
"""

from __future__ import annotations

import logging

import pytest
from eventbus_kafka import KafkaAdapter

from eventbus.adapter import SubscribeOptions
from integration_tests import harness
from integration_tests.kafka.test_kafka_adapter import (
    Collector,
    number,
    ping,
    run,
    unique,
    with_options,
)

pytestmark = [pytest.mark.broker("kafka"), pytest.mark.timeout(120)]

TANSU_DROPS_COMMIT_METADATA = (
    "Tansu keeps no offset commit metadata (OffsetFetch returns it empty), where the "
    "adapter counts runs across crashes; it warns once and cannot count them there"
)


def test_a_broker_that_drops_commit_metadata_is_named_once(
    kafka_url: str, kafka_endpoint: harness.Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """On a broker without commit metadata the first counted record says so (one
    warning); on Apache Kafka nothing is said."""

    async def scenario() -> None:
        adapter = KafkaAdapter(with_options(kafka_url, partitions=1))
        topic, group = unique("metadata"), unique("g")
        await adapter.publish(topic, [ping(0), ping(1)])
        member = Collector(
            await adapter.subscribe(topic, SubscribeOptions(group=group, start_from="earliest"))
        )
        for delivery in await member.wait_count(2):
            await delivery.ack()
        await member.close()
        await adapter.close()
        expected = kafka_endpoint.flavour == "tansu"
        assert adapter.keeps_commit_metadata is (not expected)

    caplog.set_level(logging.WARNING, "eventbus.kafka")
    run(scenario)
    warned = [r for r in caplog.records if "does not keep the metadata" in r.getMessage()]
    assert len(warned) == (1 if kafka_endpoint.flavour == "tansu" else 0), warned


def test_runs_that_never_settled_are_counted_by_the_next_member(
    kafka_url: str, kafka_endpoint: harness.Endpoint
) -> None:
    """Three members in turn get the record at the committed offset and end without
    settling it: they see attempts 1, 2, 3; the fourth sees 4, settles it, and the record
    after it comes as attempt 1 (an offset past the first clears the count)."""
    if kafka_endpoint.flavour == "tansu":
        pytest.skip(TANSU_DROPS_COMMIT_METADATA)

    async def scenario() -> None:
        adapter = KafkaAdapter(with_options(kafka_url, partitions=1))
        topic, group = unique("crashruns"), unique("g")
        options = SubscribeOptions(group=group, start_from="earliest")
        await adapter.publish(topic, [ping(0, "k"), ping(1, "k")])
        for expected in (1, 2, 3):
            member = Collector(await adapter.subscribe(topic, options))
            (first, *_) = await member.wait_count(1)
            assert (number(first), first.attempt) == (0, expected)
            await member.close()  # ends without settling it, as a crash would
        member = Collector(await adapter.subscribe(topic, options))
        (first, *_) = await member.wait_count(1)
        assert (number(first), first.attempt) == (0, 4)
        await first.ack()
        items = await member.wait_count(2)
        assert [(number(d), d.attempt) for d in items] == [(0, 4), (1, 1)]
        await items[1].ack()
        await member.close()
        await adapter.close()

    run(scenario)
