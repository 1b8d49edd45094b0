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
- A group's consumer found gone (deleted by an operator, or lost with a
  ``storage=memory`` server that restarted) is created again *where the group
  was*: after the last acknowledged stream sequence seen (its ack floor, noted
  each time the consumer's info is read), or from the start of the stream when the
  stream itself was re-created (its creation time changed). Only a group never
  seen before starts from ``start_from``.
- A consumer can go away while its members pull from it: nats-server 2.9 answers
  a pull request to a consumer that no longer exists with nothing at all (the
  JetStream API's own subscription takes it), so a consumer deleted by an
  operator, or lost with a ``storage=memory`` server that crashed and restarted,
  would leave its members pulling into the void for good. Each member notices
  when its pull requests go unanswered (a live consumer answers every expired
  request with a 408 status) and asks the :class:`ConsumerKeeper` to look: the
  consumer's info either refreshes the group's position (:class:`Floor`) or says
  it is gone, and it is created again where the group was. ``backlog()`` reads
  the same info for the bus's stall watch.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError

from eventbus.adapters_util import map_exceptions
from eventbus.errors import (
    BrokerConnectionError,
    ConfigurationError,
    ProvisioningError,
    TopicNotFoundError,
)

from .connection import jetstream_errors
from .settings import NatsSettings

if TYPE_CHECKING:
    from .adapter import NatsAdapter
    from .consumer import JetStreamSubscription

log = logging.getLogger("eventbus.nats")

_SAFE = re.compile(r"[A-Za-z0-9-]")
_BAD_SUBJECT = re.compile(r"[\s*>]|^\.|\.$|\.\.")


def encode_name(text: str) -> str:
    """``text`` as a legal stream/consumer name, injective: ``a.b`` -> ``a_2Eb``."""
    return "".join(c if _SAFE.match(c) else "".join(f"_{b:02X}" for b in c.encode()) for c in text)


def check_subject(topic: str) -> str:
    """The subject of ``topic``; raise ConfigurationError if NATS cannot carry it."""
    if not topic or _BAD_SUBJECT.search(topic):
        raise ConfigurationError(
            f"topic {topic!r} is not a valid NATS subject: use tokens separated by single "
            "dots, without spaces, '*' or '>'"
        )
    return topic


@dataclass(frozen=True, slots=True)
class StreamFacts:
    """What the adapter keeps of a stream: its size limit (-1: none), checked before
    sending, and its creation time, which tells a re-created stream apart."""

    max_msg_size: int
    created: datetime.datetime | None


@dataclass(frozen=True, slots=True)
class Floor:
    """A group's position: every message up to stream sequence ``seq`` is settled,
    on the stream created at ``created``."""

    seq: int
    created: datetime.datetime | None


def stream_config(
    s: NatsSettings, name: str, subject: str, retention: RetentionPolicy, **limits: Any
) -> StreamConfig:
    """The config of a stream the adapter creates (a topic's, or the group routes'):
    the settings' storage, replicas, age and message size, old messages discarded
    first, and ``limits`` of its own."""
    return StreamConfig(
        name=name,
        subjects=[subject],
        retention=retention,
        discard=DiscardPolicy.OLD,
        storage=StorageType.FILE if s.storage == "file" else StorageType.MEMORY,
        num_replicas=s.replicas,
        max_age=s.max_age or None,
        max_msg_size=s.max_message_bytes,
        **limits,
    )


class Provisioner:
    """Creates streams and consumers once per adapter (cached), never on read."""

    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        self._streams: dict[str, StreamFacts] = {}
        self._floors: dict[tuple[str, str], Floor] = {}
        self._lock = asyncio.Lock()
        self._consumer_locks: dict[tuple[str, str], asyncio.Lock] = {}

    def stream_name(self, topic: str) -> str:
        return f"{self.settings.stream_prefix}_{encode_name(topic)}"

    def consumer_name(self, group: str) -> str:
        return encode_name(group)

    def forget(self) -> None:
        """Check the streams again (after a server restart lost a memory-stored one)."""
        self._streams.clear()

    def max_msg_size(self, stream: str) -> int | None:
        """The ``max_msg_size`` of ``stream`` as last seen (``None``: no limit or unknown)."""
        facts = self._streams.get(stream)
        return facts.max_msg_size if facts is not None and facts.max_msg_size > 0 else None

    def note(self, stream: str, info: ConsumerInfo) -> None:
        """Keep the consumer's position from its info (see :class:`Floor`).

        The ack floor once something was acknowledged; before that, for a consumer
        that has delivered nothing yet, the sequence it starts after; otherwise (all
        it delivered is still unacknowledged) the position noted earlier stands.
        """
        acked, delivered = info.ack_floor, info.delivered
        if acked is not None and acked.consumer_seq:
            seq = acked.stream_seq
        elif delivered is not None and not delivered.consumer_seq:
            seq = delivered.stream_seq
        else:
            return
        facts = self._streams.get(stream)
        self._floors[(stream, info.name)] = Floor(seq, facts.created if facts else None)

    async def ensure_stream(self, js: JetStreamContext, topic: str) -> str:
        """The stream of ``topic``, created with the configured limits if missing."""
        name = self.stream_name(topic)
        if name in self._streams:
            return name
        subject = check_subject(topic)
        s = self.settings
        with map_exceptions(
            jetstream_errors,
            what=f"setting up the JetStream stream {name!r} of topic "
            f"{topic!r} on NATS at {s.masked_url}",
        ):
            async with self._lock:
                if name in self._streams:
                    return name
                try:
                    info = await js.stream_info(name)
                except NotFoundError:
                    if not s.provision:
                        raise ProvisioningError(
                            f"JetStream stream {name!r} for topic {topic!r} does not exist on "
                            f"NATS at {s.masked_url} and provision=false; create it (subject "
                            f"{subject!r}) or set provision=true to let the adapter"
                        ) from None
                    info = await self._add_stream(
                        js,
                        name,
                        stream_config(
                            s,
                            name,
                            subject,
                            RetentionPolicy.LIMITS,
                            max_bytes=s.max_bytes,
                            max_msgs=s.max_msgs,
                            duplicate_window=s.dedupe_window,
                        ),
                    )
                self._streams[name] = StreamFacts(info.config.max_msg_size or -1, info.created)
        return name

    async def _add_stream(
        self, js: JetStreamContext, name: str, config: StreamConfig
    ) -> StreamInfo:
        """Create the stream (or take the one created meanwhile by another process)."""
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
        return info

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

    async def ensure_consumer(
        self, js: JetStreamContext, stream: str, group: str, start_from: str
    ) -> str | None:
        """Make sure the durable consumer of ``group`` on ``stream`` exists; returns
        ``None`` when it did, else how it was created (for the log).

        A new group starts from ``start_from``; a group whose consumer is gone but
        whose position was seen resumes there (see :class:`Floor`), so nothing
        published meanwhile is skipped. Members (and processes) creating it at once
        end up with one consumer.
        """
        name = self.consumer_name(group)
        lock = self._consumer_locks.setdefault((stream, name), asyncio.Lock())
        with map_exceptions(
            jetstream_errors,
            what=f"setting up the consumer {name!r} of group {group!r} "
            f"on stream {stream!r} at {self.settings.masked_url}",
        ):
            async with lock:
                try:
                    self.note(stream, await js.consumer_info(stream, name))
                    return None
                except NotFoundError:
                    pass
                config, how = self._config_at_floor(stream, group, start_from)
                try:
                    info = await js.add_consumer(stream, config)
                except APIError as refused:
                    # Another member created it first, from where it saw the group (a
                    # different start sequence is refused as a config change): take theirs.
                    try:
                        info = await js.consumer_info(stream, name)
                    except NotFoundError:
                        raise refused from None
                    how = "by another member meanwhile"
                self.note(stream, info)
                return how

    def _config_at_floor(
        self, stream: str, group: str, start_from: str
    ) -> tuple[ConsumerConfig, str]:
        config = self.consumer_config(group, start_from)
        floor = self._floors.get((stream, config.durable_name or ""))
        if floor is None:
            return config, f"as a new group (start_from={start_from})"
        facts = self._streams.get(stream)
        created = facts.created if facts is not None else None
        if floor.created is not None and created is not None and floor.created != created:
            config.deliver_policy = DeliverPolicy.ALL
            return config, (
                "from the start of the stream, which was re-created since the "
                "group was last seen (storage lost on a restart?)"
            )
        config.deliver_policy = DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = floor.seq + 1
        return config, f"from stream sequence {floor.seq + 1}, after the last one acknowledged"


class ConsumerKeeper:
    """Looks at, and re-creates, the consumers the adapter's subscriptions pull from."""

    def __init__(self, adapter: NatsAdapter) -> None:
        self.adapter = adapter

    async def info(self, subscription: JetStreamSubscription) -> ConsumerInfo:
        """The consumer's info, its position noted; :class:`TopicNotFoundError` when
        the consumer (or its stream) is gone, :class:`BrokerConnectionError` when
        JetStream does not answer."""
        adapter = self.adapter
        timeout = min(adapter.settings.request_timeout, 5.0)
        with map_exceptions(
            {
                NotFoundError: (
                    TopicNotFoundError,
                    "it is gone: it is created again where the group was",
                ),
                Exception: BrokerConnectionError,
            },
            what=f"looking at the JetStream consumer {subscription.consumer!r} of group "
            f"{subscription.options.group!r} on stream {subscription.stream!r} (topic "
            f"{subscription.topic!r}) at {adapter.settings.masked_url}",
        ):
            js = await adapter._ready()
            info: ConsumerInfo = await js.consumer_info(
                subscription.stream, subscription.consumer, timeout=timeout
            )
        if not subscription.is_route:
            adapter._provisioner.note(subscription.stream, info)
        return info

    async def check(self, subscription: JetStreamSubscription, why: str) -> bool:
        """Look at the consumer; re-create it if gone. True when it was re-created."""
        try:
            await self.info(subscription)
            return False
        except BrokerConnectionError as exc:
            log.debug("could not look at the consumer of %s (%s): %s", subscription.topic, why, exc)
            return False
        except TopicNotFoundError:
            pass
        return await self.recreate(subscription, why)

    async def recreate(self, subscription: JetStreamSubscription, why: str) -> bool:
        """Create the consumer (and its stream) again where the group was; True when
        done, False (logged) when JetStream did not let it (tried again later)."""
        adapter = self.adapter
        group = subscription.options.group
        try:
            js = await adapter._ready()
            if subscription.is_route:
                adapter._routes.forget()
                await adapter._routes.ensure_consumer(js, subscription.topic, group)
                how: str | None = "(its routed messages wait in the route stream)"
            else:
                adapter._provisioner.forget()  # the stream too may be new
                stream = await adapter._provisioner.ensure_stream(js, subscription.topic)
                how = await adapter._provisioner.ensure_consumer(
                    js, stream, group, subscription.options.start_from
                )
        except Exception as exc:
            log.warning(
                "the JetStream consumer of group %r on topic %r is gone (%s) and could "
                "not be created again yet (%s: %s); trying again",
                group,
                subscription.topic,
                why,
                type(exc).__name__,
                exc,
            )
            return False
        if how is not None:
            log.warning(
                "the JetStream consumer %r of group %r on stream %r was gone (%s); "
                "created again %s",
                subscription.consumer,
                group,
                subscription.stream,
                why,
                how,
            )
        return True

    def check_soon(self, subscription: JetStreamSubscription, why: str) -> None:
        """:meth:`check` in the background (a status message said something is wrong)."""

        async def check() -> None:
            await self.check(subscription, why)

        task = asyncio.get_running_loop().create_task(check())
        self.adapter._background.add(task)
        task.add_done_callback(self.adapter._background.discard)
