"""Delivering to one group of a topic on JetStream (dead-letter replay to the failed group).

Every group of a topic reads the topic's stream, so a message for one group
alone cannot go there. It goes to the route stream instead:

- one stream per ``stream_prefix``, ``<prefix>__replay``, with the subjects
  ``<prefix>_REPLAY.>`` and *work-queue* retention (a message is removed once
  the one consumer it matches acks it, and kept until then, even if that
  consumer does not exist yet);
- a message for group ``G`` of topic ``T`` has the subject
  ``<prefix>_REPLAY.<T>.<G>`` (each name encoded to one token, as stream names
  are), and a durable consumer ``<T>__<G>`` filtered on exactly that subject
  takes it; each subscription of the group reads that consumer beside the
  topic's own (:class:`~eventbus.group_route.WithGroupRoute`), so only that
  group's members ever see it.

Server 2.9 allows one filter subject per consumer, hence a consumer per
(topic, group) rather than one filter list on the group's topic consumer.
"""

from __future__ import annotations

import asyncio

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from .provision import encode_name
from .settings import NatsSettings


class GroupRoutes:
    """Names and creation (cached) of the route stream and its per-group consumers."""

    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        self.stream = f"{settings.stream_prefix}__replay"  # "__" never comes out of encode_name
        self._ready = False
        self._lock = asyncio.Lock()

    def subject(self, topic: str, group: str) -> str:
        return f"{self.settings.stream_prefix}_REPLAY.{encode_name(topic)}.{encode_name(group)}"

    def consumer(self, topic: str, group: str) -> str:
        return f"{encode_name(topic)}__{encode_name(group)}"

    def forget(self) -> None:
        self._ready = False

    async def ensure_stream(self, js: JetStreamContext) -> str:
        """The route stream, created if missing (same storage and replicas as topics)."""
        if self._ready:
            return self.stream
        s = self.settings
        async with self._lock:
            if self._ready:
                return self.stream
            try:
                await js.stream_info(self.stream)
            except NotFoundError:
                config = StreamConfig(
                    name=self.stream,
                    subjects=[f"{s.stream_prefix}_REPLAY.>"],
                    retention=RetentionPolicy.WORK_QUEUE,
                    discard=DiscardPolicy.OLD,
                    storage=StorageType.FILE if s.storage == "file" else StorageType.MEMORY,
                    num_replicas=s.replicas,
                    max_age=s.max_age or None,
                    max_msg_size=s.max_message_bytes,
                )
                try:
                    await js.add_stream(config)
                except BadRequestError:
                    await js.stream_info(self.stream)  # created meanwhile by another process
            self._ready = True
        return self.stream

    async def ensure_consumer(self, js: JetStreamContext, topic: str, group: str) -> str:
        """The durable consumer of ``group``'s route on ``topic``; from the first message
        kept, so what was routed before the group subscribed is delivered too."""
        stream = await self.ensure_stream(js)
        name = self.consumer(topic, group)
        try:
            await js.consumer_info(stream, name)
        except NotFoundError:
            s = self.settings
            await js.add_consumer(stream, ConsumerConfig(
                durable_name=name,
                description=f"eventbus group {group} of topic {topic}: messages for it alone",
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=s.ack_wait,
                max_deliver=s.max_deliver,
                filter_subject=self.subject(topic, group),
                max_ack_pending=-1,
                max_waiting=512,
            ))
        return name
