"""The Redis adapters: Pub/Sub (``redis://``) and Streams (``redis+streams://``).

Example::

    adapter = RedisStreamsAdapter("redis+streams://localhost:6379/0?maxlen=100000")
    await adapter.connect()
    await adapter.publish("orders", [envelope])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from redis.asyncio.client import Pipeline

from eventbus.adapter import Capabilities, ReadRecord, SubscribeOptions, Subscription
from eventbus.envelope import Envelope
from eventbus.errors import (
    BrokerConnectionError,
    MessageTooLargeError,
    TopicNotFoundError,
    UnsupportedOperationError,
)

from . import bulk
from .base import RedisAdapter
from .client import CONNECTION_ERRORS
from .codec import (
    decode_fields,
    encode_args,
    encode_fields,
    encode_message,
    fields_size,
    raw_fields,
)
from .group_route import route_key, subscribe_with_route
from .members import member_channel, refuse_second_member
from .pipeline import Command
from .pubsub import PubSubSubscription


class RedisPubSubAdapter(RedisAdapter):
    """Redis Pub/Sub: ``redis://`` or ``rediss://`` (TLS); ``?sharded=true`` for a cluster.

    Every subscriber receives every message published while it is subscribed, at
    most once; nothing is stored, so there are no groups, no redelivery and no
    replay. Use ``redis+streams://`` when messages must not be lost.
    """

    schemes = ("redis", "rediss")
    stronger = ("redis+streams:// (Redis Streams: consumer groups whose members compete, "
                "XACK and redelivery)")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        if self.settings.mode != "pubsub":
            raise ValueError(f"{self.settings.masked_url} is a Streams URL")
        self._started_groups: set[tuple[str, str]] = set()
        self.capabilities = Capabilities(
            persistent=False,
            consumer_groups=False,
            fanout=True,
            ordering="none",
            redelivery=False,
            native_delay=False,
            native_dead_letter=False,
            replay=False,
            headers=False,
            max_message_bytes=self.settings.max_message_bytes,
            dedupe_window=None,
            reconnect=True,
            lease=False,
            half_open_bound=self.settings.half_open_bound,
            browse=True,
            group_route=False,
            raw_publish=True,
        )

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        """PUBLISH each envelope as a structured CloudEvent; Redis's reply confirms it.

        A batch goes as one script run (``bulk.publish_many``) unless sharded:
        SPUBLISH must reach the shard owning the channel, which a script without
        keys does not.
        """
        sharded = self.settings.sharded
        limit = self.capabilities.max_message_bytes
        bodies = []
        for envelope in envelopes:
            body = encode_message(envelope)
            if len(body) > limit:
                self.check_size(topic, envelope, len(body))
            bodies.append(body)
        if len(bodies) < 2 or sharded:
            command = "SPUBLISH" if sharded else "PUBLISH"
            await self.send(topic, envelopes, [(command, topic, body) for body in bodies])
            return
        step = bulk.MAX_PER_SCRIPT
        parts = [bodies[i:i + step] for i in range(0, len(bodies), step)]
        await self.send(topic, envelopes, [bulk.publish_many(topic, part) for part in parts],
                        [len(part) for part in parts])

    def _publish_command(self, topic: str, body: bytes) -> Callable[[Pipeline], Any]:
        if self.settings.sharded:
            return lambda pipe: pipe.spublish(topic, body)
        return lambda pipe: pipe.publish(topic, body)

    async def publish_raw(
        self, topic: str, payload: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        """PUBLISH ``payload`` as it is; Pub/Sub carries no headers, so giving any
        raises UnsupportedOperationError."""
        if headers:
            raise UnsupportedOperationError(
                f"Redis Pub/Sub has no headers: cannot publish {sorted(headers)} with a "
                f"message to channel {topic!r} (use redis+streams://, whose entries have "
                "fields)")
        if len(payload) > self.capabilities.max_message_bytes:
            raise MessageTooLargeError(
                f"a raw message of {len(payload)} bytes is over the "
                f"{self.capabilities.max_message_bytes}-byte limit of {type(self).__name__} "
                f"on channel {topic!r}; nothing was sent")
        await self.send(topic, [], [self._publish_command(topic, payload)])

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        """Subscribe to the channel ``topic``; returns once Redis confirmed it.

        Pub/Sub has no groups: a second live member of ``options.group`` (here or
        in another process) is refused with GuaranteeUnavailableError, since it
        would get every message rather than compete (see :mod:`.members`).
        """
        subscription = PubSubSubscription(self, topic, options)
        await subscription.start()
        self._subscriptions.add(subscription)
        try:
            await refuse_second_member(self, subscription, self._started_groups)
        except BaseException:
            await subscription.close()
            raise
        return subscription

    async def close(self) -> None:
        """Close as every Redis adapter does; a later start counts group members again."""
        self._started_groups.clear()
        await super().close()

    async def read(self, topic: str, *, limit: int | None = None) -> list[ReadRecord]:
        """Pub/Sub keeps no messages, so a channel never holds anything to browse: this
        raises TopicNotFoundError and creates nothing. That is what ``eventbus dlq`` and
        :class:`~eventbus.dlq.DeadLetters` meet here: a dead letter published on Pub/Sub
        reaches only whoever is subscribed to its channel at that moment; nothing is kept
        to list or replay."""
        raise TopicNotFoundError(
            f"Redis Pub/Sub keeps no messages: channel {topic!r} on {self.settings.masked_url} "
            "holds nothing to read (a dead letter on Pub/Sub reaches only whoever listens to "
            "its channel when it is published; nothing was created). Use redis+streams:// "
            "to keep dead letters you can list and replay"
        )

    def member_channels(self, topic: str, group: str) -> tuple[str, ...]:
        """The channels a subscription joins besides ``topic`` (see :mod:`.members`)."""
        return () if self.settings.sharded else (member_channel(topic, group),)

    def live_subscriptions(self) -> list[PubSubSubscription]:
        """This adapter's open subscriptions."""
        return [s for s in self._subscriptions if isinstance(s, PubSubSubscription)]


class RedisStreamsAdapter(RedisAdapter):
    """Redis Streams: ``redis+streams://`` or ``rediss+streams://`` (TLS).

    One stream per topic (trimmed to about ``maxlen`` entries), one consumer group
    per eventbus group, at-least-once with XACK, XAUTOCLAIM of dead consumers'
    entries and delayed redelivery through a sorted set.
    """

    schemes = ("redis+streams", "rediss+streams")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        if self.settings.mode != "streams":
            raise ValueError(f"{self.settings.masked_url} is a Pub/Sub URL")
        self.capabilities = Capabilities(
            persistent=True,
            consumer_groups=True,
            fanout=True,
            # One stream is one ordered log, but the consumers of a group compete
            # for its entries and a redelivery comes back after later ones.
            ordering="none",
            redelivery=True,
            # The delay is kept by Redis (a sorted set) but waited out by polling.
            native_delay=False,
            native_dead_letter=False,
            replay=True,
            headers=True,
            max_message_bytes=self.settings.max_message_bytes,
            dedupe_window=None,
            reconnect=True,
            # A pending entry idle past claim_idle_ms is reclaimed by XAUTOCLAIM; each
            # consumer keeps what it holds fresh while handlers run.
            lease=True,
            half_open_bound=self.settings.half_open_bound,
            browse=True,
            group_route=True,
            raw_publish=True,
        )

    def _xadd(self, topic: str, fields: dict[Any, Any]) -> Callable[[Pipeline], Any]:
        maxlen = self.settings.maxlen
        if maxlen:
            return lambda pipe: pipe.xadd(topic, fields, maxlen=maxlen, approximate=True)
        return lambda pipe: pipe.xadd(topic, fields)

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        """XADD each envelope (binary mode: attributes as fields); the reply confirms it.

        A batch goes as one script run doing the XADDs (``bulk.xadd_many``).
        """
        maxlen = self.settings.maxlen
        if len(envelopes) < 2:
            head: tuple[Any, ...] = ("XADD", topic, "MAXLEN", "~", maxlen, "*") if maxlen \
                else ("XADD", topic, "*")
        else:
            head = ()
        limit = self.capabilities.max_message_bytes
        commands: list[Command] = []
        for envelope in envelopes:
            args, size = encode_args(envelope, head)
            if size > limit:
                self.check_size(topic, envelope, size)
            commands.append(args)
        if not head:
            step = bulk.MAX_PER_SCRIPT
            parts = [commands[i:i + step] for i in range(0, len(commands), step)]
            await self.send(topic, envelopes, [bulk.xadd_many(topic, maxlen, part)  # type: ignore[arg-type]
                                               for part in parts], [len(p) for p in parts])
            return
        await self.send(topic, envelopes, commands)

    async def publish_raw(
        self, topic: str, payload: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        """XADD an entry of ``headers`` as fields and ``payload`` as its ``body`` field,
        as another client would write it (see :func:`.codec.raw_fields`); how an
        undecodable dead letter is replayed as it arrived."""
        fields = raw_fields(payload, headers)
        size = fields_size({name.decode("utf-8", "replace"): value
                            for name, value in fields.items()})
        if size > self.capabilities.max_message_bytes:
            raise MessageTooLargeError(
                f"a raw entry of {size} bytes is over the {self.capabilities.max_message_bytes}"
                f"-byte limit of {type(self).__name__} on topic {topic!r}; nothing was sent")
        await self.send(topic, [], [self._xadd(topic, fields)])

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        """Join (creating it if new) the consumer group ``options.group`` of ``topic``,
        and of the group's route stream (see :mod:`eventbus_redis.group_route`)."""
        return await subscribe_with_route(self, topic, options)

    def track(self, subscription: Any) -> None:
        """Remember ``subscription`` so :meth:`close` closes it."""
        self._subscriptions.add(subscription)

    async def publish_to_group(self, topic: str, group: str,
                               envelopes: Sequence[Envelope]) -> None:
        """XADD ``envelopes`` to ``group``'s route stream of ``topic``: that group's
        consumers alone read it. Same size checks and confirmation as :meth:`publish`."""
        key = route_key(topic, group)
        commands: list[Command] = []
        for envelope in envelopes:
            fields, size = encode_fields(envelope)
            self.check_size(topic, envelope, size)
            commands.append(self._xadd(key, fields))
        await self.send(topic, envelopes, commands)

    async def read(self, topic: str, *, limit: int | None = None) -> list[ReadRecord]:
        """XRANGE from the oldest retained entry; no group is created or touched."""
        client: Any = self.client  # redis-py's reply types are too narrow
        try:
            exists = await client.exists(topic)
            entries = [] if not exists else await client.xrange(
                topic, "-", "+", count=None if limit is None else max(0, limit) or 1)
        except CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(
                f"cannot read {topic!r} on Redis at {self.settings.masked_url}: {exc}"
            ) from exc
        if not exists:
            raise TopicNotFoundError(
                f"stream {topic!r} does not exist on Redis at {self.settings.masked_url}: "
                "check the name (reading creates nothing)"
            )
        if limit is not None and limit <= 0:
            return []
        records = []
        for entry_id, fields in entries:
            envelope, body, error, _ = decode_fields(fields)
            message_id = f"{topic}/{entry_id.decode()}"
            records.append(ReadRecord(topic, message_id, envelope,
                                      None if envelope else body, error))
        return records

