"""The RabbitMQ topology of topics, groups, delay tiers and dead letters.

- topic ``T`` -> durable **topic exchange** ``T``; messages are published with the
  event type as routing key, so a queue outside eventbus can bind to some types.
- group ``G`` of ``T`` -> durable queue ``T/G`` bound with ``#`` (groups fan
  out; the consumers of one group compete on its queue). Its dead-letter exchange
  is ``T.G.dlq``, so ``reject()`` moves a message there natively.
- dead letters of ``G`` -> exchange ``T.G.dlq`` (the bus's DLQ topic) and the
  queue ``T.G.dlq/eventbus-dlq-replay`` bound to it: the queue of the group the
  DLQ tooling (:class:`eventbus.dlq.DeadLetters`) reads, declared with the
  group's own, so every dead letter is kept for it even when nobody listens.
- delay tier ``n`` ms of ``G`` -> queue ``T/G/delay-<n>ms`` with ``x-message-ttl=n``
  dead-lettering (through the default exchange) back to ``T/G``: a parked message
  expires into its work queue. One TTL per queue, so a long delay never blocks a
  short one.

Declarations are idempotent; aio-pika's robust channel repeats them after a
reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aio_pika import Channel, ExchangeType
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue
from aiormq.exceptions import ChannelNotFoundEntity

from eventbus.dlq import REPLAY_GROUP
from eventbus.middleware.deadletter import dlq_topic

from .settings import RabbitMQSettings


def work_queue(topic: str, group: str) -> str:
    """The queue of ``group`` on ``topic``."""
    return f"{topic}/{group}"


def delay_queue(topic: str, group: str, tier_ms: int) -> str:
    """The delay tier queue of ``tier_ms`` milliseconds of ``group`` on ``topic``."""
    return f"{work_queue(topic, group)}/delay-{tier_ms}ms"


def pick_tier(tiers: tuple[int, ...], delay_ms: int) -> int:
    """The smallest tier of at least ``delay_ms`` (the largest tier if none is)."""
    for tier in tiers:
        if tier >= delay_ms:
            return tier
    return tiers[-1]


async def declare_exchange(channel: AbstractChannel, topic: str) -> AbstractExchange:
    """The durable topic exchange of ``topic``."""
    return await channel.declare_exchange(topic, ExchangeType.TOPIC, durable=True)


def queue_arguments(settings: RabbitMQSettings, topic: str, group: str) -> dict[str, Any]:
    """Arguments of a group's work queue (they must stay the same for its life)."""
    arguments: dict[str, Any] = {
        "x-queue-type": settings.queue_type,
        "x-dead-letter-exchange": dlq_topic(topic, group),
    }
    if settings.single_active_consumer:
        arguments["x-single-active-consumer"] = True
    return arguments


async def declare_group(
    channel: AbstractChannel, settings: RabbitMQSettings, topic: str, group: str
) -> AbstractQueue:
    """Exchange, work queue, binding and dead-letter queue of ``group`` on ``topic``."""
    exchange = await declare_exchange(channel, topic)
    dead = dlq_topic(topic, group)
    dead_exchange = await declare_exchange(channel, dead)
    parked = await channel.declare_queue(
        work_queue(dead, REPLAY_GROUP), durable=True,
        arguments=queue_arguments(settings, dead, REPLAY_GROUP),
    )
    await parked.bind(dead_exchange, "#")
    queue = await channel.declare_queue(
        work_queue(topic, group), durable=True,
        arguments=queue_arguments(settings, topic, group),
    )
    await queue.bind(exchange, "#")
    return queue


async def declare_delay_tier(
    channel: AbstractChannel, topic: str, group: str, tier_ms: int
) -> str:
    """The delay queue of ``tier_ms`` for ``group``; returns its name."""
    name = delay_queue(topic, group, tier_ms)
    await channel.declare_queue(
        name,
        durable=True,
        arguments={
            "x-message-ttl": tier_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": work_queue(topic, group),
        },
    )
    return name



@contextlib.asynccontextmanager
async def scratch_channel(connection: AbstractConnection,
                          timeout: float) -> AsyncIterator[AbstractChannel]:
    """A short-lived channel of its own, not registered for recovery: a refused
    declaration (404, PRECONDITION_FAILED) closes its channel, which must not be one
    that consumes or publishes. Everything inside runs within ``timeout``."""
    channel = Channel(connection, publisher_confirms=False)
    try:
        async with asyncio.timeout(timeout):
            await channel.initialize()
            yield channel
    finally:
        with contextlib.suppress(Exception, asyncio.CancelledError):
            if not channel.is_closed:
                await asyncio.wait_for(channel.close(), timeout)


async def queue_depth(connection: AbstractConnection, name: str, timeout: float) -> int | None:
    """Ready messages in queue ``name`` (not those delivered and unacked), or ``None``
    when it does not exist; creates nothing (a passive declare)."""
    async with scratch_channel(connection, timeout) as channel:
        underlay = await channel.get_underlay_channel()
        try:
            declared = await underlay.queue_declare(name, passive=True)
        except ChannelNotFoundEntity:
            return None
        return int(declared.message_count or 0)
