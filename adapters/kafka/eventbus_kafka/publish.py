"""Getting encoded records to the producer: per record, or as whole batches.

A large ``publish`` (``publish_many``) goes through aiokafka's batch API: the
records are split by partition (keyed ones exactly as the producer's default
partitioner would place them, so a key always lands on one partition), each
partition's records are appended to a ``BatchBuilder`` and submitted with one
``send_batch``, and the call waits for one future per batch instead of one per
record. That skips ``send()``'s per-record coroutine, partition lookup and
future, most of what the client spends per record.

A small publish goes record by record through ``send()``, so concurrent small
publishes share the producer's lingering batches; one with nothing else in
flight has its batches sent at once rather than after ``linger``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner

log = logging.getLogger("eventbus.kafka")

# (key, value, headers, size), as codec.encode_parts makes them.
Record = tuple[bytes | None, bytes, list[tuple[str, bytes]], int]

BATCH_MIN = 32
"""From this many records in one publish, records are sent as whole batches."""

_partitioner = DefaultPartitioner()


Locks = dict[tuple[str, int], asyncio.Lock]


async def send_batched(
    producer: AIOKafkaProducer, topic: str, records: Sequence[Record], locks: Locks
) -> dict[int, BaseException]:
    """Send ``records`` as one batch per partition (more if one fills); the failures by index.

    ``locks`` (one per topic and partition, kept by the adapter) queue concurrent
    publishes per partition in order: aiokafka's ``send_batch`` waits while the
    partition has a batch queued, and its timeout bookkeeping there subtracts the
    total time waited on every wake-up, so many callers waiting at once time out
    long before ``request_timeout``.
    """
    try:
        partitions = sorted(await producer.partitions_for(topic))
    except Exception as exc:  # no metadata (broker gone, topic missing): nothing was sent
        return dict.fromkeys(range(len(records)), exc)
    by_partition: dict[int, list[int]] = {}
    start = random.randrange(len(partitions))
    for index, record in enumerate(records):
        key = record[0]
        if key is None:  # spread evenly, as the producer's random choice would
            partition = partitions[(start + index) % len(partitions)]
        else:
            partition = _partitioner(key, partitions, partitions)
        by_partition.setdefault(partition, []).append(index)
    pending: list[tuple[Any, list[int]]] = []
    failures: dict[int, BaseException] = {}
    for partition, indexes in by_partition.items():
        builder = producer.create_batch()
        in_batch: list[int] = []
        for index in indexes:
            key, value, headers, _ = records[index]
            if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                await _submit(
                    producer, topic, partition, builder, in_batch, pending, failures, locks
                )
                builder, in_batch = producer.create_batch(), []
                # An empty batch takes any record, whatever its size (aiokafka's rule);
                # should that ever change, the record fails instead of going missing.
                if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    failures[index] = MessageSizeTooLargeError(
                        f"a record of {len(value)} bytes does not fit an empty batch"
                    )
                    continue
            in_batch.append(index)
        await _submit(producer, topic, partition, builder, in_batch, pending, failures, locks)
    results = await asyncio.gather(*(f for f, _ in pending), return_exceptions=True)
    for result, (_, indexes) in zip(results, pending, strict=True):
        if isinstance(result, BaseException):
            failures.update(dict.fromkeys(indexes, result))
    return failures


async def _submit(
    producer: AIOKafkaProducer,
    topic: str,
    partition: int,
    builder: Any,
    indexes: list[int],
    pending: list[tuple[Any, list[int]]],
    failures: dict[int, BaseException],
    locks: Locks,
) -> None:
    if not indexes:
        return
    # Closed, the batch is complete: the sender takes it without lingering.
    builder.close()
    lock = locks.get((topic, partition))
    if lock is None:
        lock = locks[(topic, partition)] = asyncio.Lock()
    try:
        async with lock:
            future = await producer.send_batch(builder, topic, partition=partition)
    except Exception as exc:  # not queued (timeout waiting for room, producer closed)
        failures.update(dict.fromkeys(indexes, exc))
        return
    pending.append((future, indexes))


async def send_each(
    producer: AIOKafkaProducer, topic: str, records: Sequence[Record], alone: Callable[[], bool]
) -> dict[int, BaseException]:
    """``send()`` record by record; ``alone``: no other publish in flight, send now."""
    futures: list[Any] = []
    send = producer.send
    for key, value, headers, _ in records:
        try:
            futures.append(await send(topic, value, key=key, headers=headers))
        except Exception as exc:  # could not even be queued
            futures.append(_failed(exc))
    if alone():  # checked after queueing: others may have started meanwhile
        send_now(producer)
    results = await asyncio.gather(*futures, return_exceptions=True)
    return {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}


def send_now(producer: AIOKafkaProducer) -> None:
    """Close the producer's open batches and wake its sender, so they go out now.

    ``linger`` lets concurrent publishes share produce requests; a publish with
    nothing else in flight would just wait it out. aiokafka has no public "send
    now" (``flush()`` waits for the linger), so this does what its own
    ``flush_for_commit`` does without waiting; if the internals ever differ, the
    records simply linger as configured.
    """
    accumulator = getattr(producer, "_message_accumulator", None)
    try:
        for batches in accumulator._batches.values():  # type: ignore[union-attr]
            for batch in batches:
                batch._builder.close()
        waiter = accumulator._waiter_future  # type: ignore[union-attr]
        if not waiter.done():
            waiter.set_result(None)
    except AttributeError:
        log.debug("aiokafka internals differ; a lone publish waits for linger")


def _failed(exc: BaseException) -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_exception(exc)
    return future
