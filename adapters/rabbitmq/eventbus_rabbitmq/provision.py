"""The RabbitMQ topology of topics, groups, delay tiers and dead letters.

- topic ``T`` -> durable **topic exchange** ``T``; messages are published with the
  event type as routing key, so a queue outside eventbus can bind to some types.
- group ``G`` of ``T`` -> durable queue ``T/G`` bound with ``#`` (groups fan
  out; the consumers of one group compete on its queue). Its dead-letter exchange
  is ``T.G.dlq``, so ``reject()`` moves a message there natively.
- dead letters of ``G`` -> exchange ``T.G.dlq`` (the bus's DLQ topic) and the
  queue ``T.G.dlq/eventbus-dlq-replay`` bound to it: the queue of the group the
  DLQ tooling (:class:`eventbus.deadletters.DeadLetters`) reads, declared with the
  group's own, so every dead letter is kept for it even when nobody listens.
- delay tier ``n`` ms of ``G`` -> queue ``T/G/delay-<n>ms`` with ``x-message-ttl=n``
  dead-lettering (through the default exchange) back to ``T/G``: a parked message
  expires into its work queue. One TTL per queue, so a long delay never blocks a
  short one.

Declarations are idempotent; aio-pika's robust channel repeats them after a
reconnect. With ``provision=false`` nothing is declared: :func:`require` checks
(passively, creating nothing) that what a publish or subscribe needs exists, and a
missing exchange or queue is a :class:`~eventbus.errors.ProvisioningError` naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aio_pika import Channel, ExchangeType
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange, AbstractQueue
from aiormq.exceptions import ChannelNotFoundEntity

from eventbus.adapter import REPLAY_GROUP, dlq_topic
from eventbus.errors import ProvisioningError

from .settings import RabbitMQSettings


def work_queue(topic: str, group: str) -> str:
    """The queue of ``group`` on ``topic``."""
    return f"{topic}/{group}"


def delay_queue(topic: str, group: str, tier_ms: int) -> str:
    """The delay tier queue of ``tier_ms`` milliseconds of ``group`` on ``topic``."""
    return f"{work_queue(topic, group)}/delay-{tier_ms}ms"


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
        work_queue(dead, REPLAY_GROUP),
        durable=True,
        arguments=queue_arguments(settings, dead, REPLAY_GROUP),
    )
    await parked.bind(dead_exchange, "#")
    queue = await channel.declare_queue(
        work_queue(topic, group), durable=True, arguments=queue_arguments(settings, topic, group)
    )
    await queue.bind(exchange, "#")
    return queue


async def declare_delay_tier(channel: AbstractChannel, topic: str, group: str, tier_ms: int) -> str:
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
async def scratch_channel(
    connection: AbstractConnection, timeout: float
) -> AsyncIterator[AbstractChannel]:
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


def delay_queues(settings: RabbitMQSettings, topic: str, group: str) -> list[str]:
    """The delay tier queues of ``group`` on ``topic``, one per ``delay_tiers`` tier."""
    return [delay_queue(topic, group, round(tier * 1000)) for tier in settings.delay_tiers]


async def require(
    connection: AbstractConnection,
    settings: RabbitMQSettings,
    *,
    exchanges: Sequence[str] = (),
    queues: Sequence[str] = (),
) -> None:
    """With ``provision=false``: raise :class:`ProvisioningError` naming every exchange
    and queue of these that does not exist (passive declares: nothing is created)."""
    timeout = settings.publish_timeout
    missing = [
        f"exchange {name!r}"
        for name in exchanges
        if not await exchange_exists(connection, name, timeout)
    ]
    missing += [
        f"queue {name!r}" for name in queues if await queue_depth(connection, name, timeout) is None
    ]
    if missing:
        raise ProvisioningError(
            f"{', '.join(missing)} do{'es' if len(missing) == 1 else ''} not exist on "
            f"RabbitMQ at {settings.masked_url} and provision=false forbids declaring "
            "them; declare them as docs/adapters/rabbitmq.md describes (exchange, group "
            "queue, dead-letter exchange and queue, delay tier queues), or set "
            "provision=true"
        )


async def exchange_exists(connection: AbstractConnection, name: str, timeout: float) -> bool:
    """Whether exchange ``name`` exists; creates nothing (a passive declare)."""
    async with scratch_channel(connection, timeout) as channel:
        underlay = await channel.get_underlay_channel()
        try:
            await underlay.exchange_declare(exchange=name, passive=True)
        except ChannelNotFoundEntity:
            return False
        return True


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
