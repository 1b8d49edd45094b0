"""JetStream resources: one stream per topic, one durable pull consumer per group.

- A topic ``orders.created`` is the subject ``orders.created``, stored by the
  stream ``EB_orders_2Ecreated`` (``stream_prefix`` + ``_`` + the topic with
  every character other than a letter, digit or ``-`` written as ``_XX`` hex,
  so two topics never share a stream and every topic is a legal stream name).
- A group is a durable pull consumer of that stream, named the same way; its
  members compete for messages, separate groups each get every message.
- Streams keep messages by ``max_age``/``max_bytes``/``max_msgs`` (limits
  retention, oldest discarded first), on ``file`` storage by default, with
  ``duplicate_window`` = ``dedupe_window`` seconds.
"""

from __future__ import annotations

import asyncio
import re

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

from eventbus.errors import ConfigurationError

from .settings import NatsSettings

_SAFE = re.compile(r"[A-Za-z0-9-]")
_BAD_SUBJECT = re.compile(r"[\s*>]|^\.|\.$|\.\.")


def encode_name(text: str) -> str:
    """``text`` as a legal stream/consumer name, injective: ``a.b`` -> ``a_2Eb``."""
    return "".join(c if _SAFE.match(c) else "".join(f"_{b:02X}" for b in c.encode())
                   for c in text)


def check_subject(topic: str) -> str:
    """The subject of ``topic``; raise ConfigurationError if NATS cannot carry it."""
    if not topic or _BAD_SUBJECT.search(topic):
        raise ConfigurationError(
            f"topic {topic!r} is not a valid NATS subject: use tokens separated by single "
            "dots, without spaces, '*' or '>'"
        )
    return topic


class Provisioner:
    """Creates streams and consumers once per adapter (cached), never on read."""

    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        # Stream name -> its max_msg_size (-1: none), for the size check before sending.
        self._streams: dict[str, int] = {}
        self._lock = asyncio.Lock()

    def stream_name(self, topic: str) -> str:
        return f"{self.settings.stream_prefix}_{encode_name(topic)}"

    def consumer_name(self, group: str) -> str:
        return encode_name(group)

    def forget(self) -> None:
        """Check the streams again (after a server restart lost a memory-stored one)."""
        self._streams.clear()

    def max_msg_size(self, stream: str) -> int | None:
        """The ``max_msg_size`` of ``stream`` as last seen (``None``: no limit or unknown)."""
        size = self._streams.get(stream, -1)
        return size if size > 0 else None

    async def ensure_stream(self, js: JetStreamContext, topic: str) -> str:
        """The stream of ``topic``, created with the configured limits if missing."""
        name = self.stream_name(topic)
        if name in self._streams:
            return name
        subject = check_subject(topic)
        s = self.settings
        async with self._lock:
            if name in self._streams:
                return name
            try:
                info = await js.stream_info(name)
                self._streams[name] = info.config.max_msg_size or -1
            except NotFoundError:
                if not s.create_streams:
                    raise ConfigurationError(
                        f"JetStream stream {name!r} for topic {topic!r} does not exist and "
                        "create_streams=false; create it (subject "
                        f"{subject!r}) or allow the adapter to"
                    ) from None
                self._streams[name] = await self._add_stream(js, name, StreamConfig(
                    name=name,
                    subjects=[subject],
                    retention=RetentionPolicy.LIMITS,
                    discard=DiscardPolicy.OLD,
                    storage=StorageType.FILE if s.storage == "file" else StorageType.MEMORY,
                    num_replicas=s.replicas,
                    max_age=s.max_age or None,
                    max_bytes=s.max_bytes,
                    max_msgs=s.max_msgs,
                    max_msg_size=s.max_message_bytes,
                    duplicate_window=s.dedupe_window,
                ))
        return name

    async def _add_stream(self, js: JetStreamContext, name: str, config: StreamConfig) -> int:
        """Create the stream; its ``max_msg_size`` (-1: none)."""
        try:
            info = await js.add_stream(config)
        except BadRequestError as refused:
            # Another process (or connection) created the stream between our lookup and
            # our create: the server then refuses ours ("subjects overlap with an
            # existing stream" / "name already in use"). Theirs is the one to use.
            try:
                info = await js.stream_info(name)
            except NotFoundError:
                raise refused from None  # no such stream after all: the refusal stands
        return info.config.max_msg_size or -1

    def consumer_config(self, group: str, start_from: str) -> ConsumerConfig:
        s = self.settings
        return ConsumerConfig(
            durable_name=self.consumer_name(group),
            description=f"eventbus group {group}",
            deliver_policy=DeliverPolicy.ALL if start_from == "earliest" else DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=s.ack_wait,
            max_deliver=s.max_deliver,
            # Members bound their own unsettled deliveries (prefetch); the consumer-wide
            # cap only has to be large enough for every member of the group.
            max_ack_pending=-1,
            max_waiting=512,
        )

    async def ensure_consumer(self, js: JetStreamContext, stream: str, group: str,
                              start_from: str) -> str:
        """The durable consumer of ``group`` on ``stream``; created if new (an existing
        one keeps its position: ``start_from`` only applies to a new group)."""
        name = self.consumer_name(group)
        try:
            await js.consumer_info(stream, name)
        except NotFoundError:
            await js.add_consumer(stream, self.consumer_config(group, start_from))
        return name
