"""Browsing a topic without a consumer group, for :meth:`KafkaAdapter.read`.

A consumer with no group id is assigned every partition, seeks to the earliest
retained offset and reads up to the end offsets captured at the start, so it
returns as soon as it has read what was there (no idle wait), commits nothing,
joins no group and creates no topic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from eventbus.adapter import ReadRecord
from eventbus.adapters_util import map_exceptions
from eventbus.errors import BrokerConnectionError

from .codec import decode

if TYPE_CHECKING:
    from .adapter import KafkaAdapter

log = logging.getLogger("eventbus.kafka")

_POLL_MS = 200


async def read_topic(
    adapter: KafkaAdapter, topic: str, partitions: list[int], limit: int | None
) -> list[ReadRecord]:
    """The records of ``topic`` from the earliest to the end as of now, oldest first."""
    settings = adapter.settings
    consumer = AIOKafkaConsumer(
        **adapter.client_options(),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=max(1024 * 1024, settings.max_message_bytes + 4096),
    )
    stall = settings.request_timeout
    try:
        with map_exceptions(
            {(KafkaError, OSError): BrokerConnectionError},
            what=(f"reading topic {topic!r} on Kafka at {settings.masked_url}"),
        ):
            await asyncio.wait_for(consumer.start(), settings.connect_timeout)
            records = await _read(consumer, topic, partitions, limit, stall)
    finally:
        try:
            await consumer.stop()
        except Exception as exc:  # nothing to commit or leave: best effort
            log.debug("stopping the browsing consumer of %s failed: %s", topic, exc)
    # Oldest first across partitions: by broker timestamp, then position.
    records.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
    if limit is not None:
        records = records[:limit]
    return [_read_record(topic, record) for record in records]


async def _read(
    consumer: AIOKafkaConsumer, topic: str, partitions: list[int], limit: int | None, stall: float
) -> list[Any]:
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    starts = await asyncio.wait_for(consumer.beginning_offsets(tps), stall)
    ends = await asyncio.wait_for(consumer.end_offsets(tps), stall)
    remaining = {tp for tp in tps if ends[tp] > starts[tp]}
    for tp in remaining:
        consumer.seek(tp, starts[tp])
    collected: dict[TopicPartition, list[Any]] = {tp: [] for tp in tps}
    progress = time.monotonic()
    while remaining:
        batch = await consumer.getmany(*remaining, timeout_ms=_POLL_MS)
        for tp, records in batch.items():
            for record in records:
                # With a limit, each partition's first ``limit`` records hold the
                # ``limit`` oldest of the topic.
                if record.offset < ends[tp] and (limit is None or len(collected[tp]) < limit):
                    collected[tp].append(record)
                    progress = time.monotonic()
        for tp in list(remaining):
            full = limit is not None and len(collected[tp]) >= limit
            if full or await consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)
        if remaining and time.monotonic() - progress > stall:
            behind = sorted(tp.partition for tp in remaining)
            raise TimeoutError(f"no progress for {stall:g}s; partitions {behind} not at the end")
    return [record for records in collected.values() for record in records]


def _read_record(topic: str, record: Any) -> ReadRecord:
    decoded = decode(record.key, record.value, record.headers or ())
    return ReadRecord(
        topic=topic,
        message_id=f"{record.topic}/{record.partition}/{record.offset}",
        envelope=decoded.envelope,
        raw=decoded.raw if decoded.envelope is None else None,
        decode_error=decoded.error,
    )
