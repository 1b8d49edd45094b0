"""The Redis Pub/Sub adapter (``redis://``) and its subscriptions: one SUBSCRIBE (or
SSUBSCRIBE) connection per subscription.

At most once: a message is handed out as it arrives and settling it does
nothing on Redis (there is nothing to acknowledge). A dropped connection ends
the iteration with ConnectionLostError; the bus then subscribes again, and what
was published in between is lost, as Pub/Sub promises.

A connection can also go silent without closing (a frozen proxy or NAT entry:
TCP stays up, nothing arrives), which from inside looks exactly like a quiet
channel. So a connection that heard nothing for ``ping_interval`` is sent a
PING (allowed in subscribed mode; its reply is a ``pong`` message), and one that
then hears nothing for ``ping_timeout`` more is given up like a dropped one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from eventbus.adapter import Capabilities, Delivery, ReadRecord, SubscribeOptions, Subscription
from eventbus.adapters_util import AtMostOnceDelivery, Redeliveries, map_exceptions, translate
from eventbus.envelope import Envelope
from eventbus.errors import (
    ConnectionLostError,
    MessageTooLargeError,
    TopicNotFoundError,
    UnsupportedOperationError,
)
from eventbus.raw_message import RawMessage

from .adapter import RedisAdapter
from .codec import decode_message, encode_message
from .connection import CLIENT_ERRORS
from .members import member_channel, refuse_second_member
from .publish import MAX_PER_SCRIPT, publish_many

log = logging.getLogger("eventbus.redis")

try:  # the sentinel hiredis returns for "no complete reply buffered" (see _buffered)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
except ImportError:  # another redis-py layout: every message goes through get_message
    _NOT_ENOUGH_DATA = None


class RedisPubSubAdapter(RedisAdapter):
    """Redis Pub/Sub: ``redis://`` or ``rediss://`` (TLS); ``?sharded=true`` for a cluster.

    Every subscriber receives every message published while it is subscribed, at
    most once; nothing is stored, so there are no groups, no redelivery and no
    replay. Use ``redis+streams://`` when messages must not be lost.
    """

    schemes = ("redis", "rediss")
    stronger = (
        "redis+streams:// (Redis Streams: consumer groups whose members compete, "
        "XACK and redelivery)"
    )

    def _setup(self, client: Redis | None) -> None:
        super()._setup(client)
        if self.settings.mode != "pubsub":
            raise ValueError(f"{self.settings.masked_url} is a Streams URL")
        self._started_groups: set[tuple[str, str]] = set()
        # A broker that stores nothing (a channel reaches whoever is subscribed), except:
        self.capabilities = replace(
            Capabilities.EPHEMERAL,
            max_message_bytes=self.settings.max_message_bytes,
            half_open_bound=self.settings.half_open_bound,
            consumer_groups=False,  # every subscriber gets every message (see .members)
            headers=False,  # a message is its payload alone
        )

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        """PUBLISH each envelope as a structured CloudEvent; Redis's reply confirms it.

        A batch goes as one script run (``publish.publish_many``) unless sharded:
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
        step = MAX_PER_SCRIPT
        parts = [bodies[i : i + step] for i in range(0, len(bodies), step)]
        await self.send(
            topic,
            envelopes,
            [publish_many(topic, part) for part in parts],
            [len(part) for part in parts],
        )

    def _publish_command(self, topic: str, body: bytes) -> Callable[[Pipeline], Any]:
        if self.settings.sharded:
            return lambda pipe: pipe.spublish(topic, body)
        return lambda pipe: pipe.publish(topic, body)

    async def publish_raw(self, topic: str, message: RawMessage) -> None:
        """PUBLISH ``message``'s payload as it is; Pub/Sub carries no headers, so giving
        any raises UnsupportedOperationError."""
        payload, headers = message.payload, message.headers
        if headers:
            raise UnsupportedOperationError(
                f"Redis Pub/Sub has no headers: cannot publish {sorted(headers)} with a "
                f"message to channel {topic!r} (use redis+streams://, whose entries have "
                "fields)"
            )
        if len(payload) > self.capabilities.max_message_bytes:
            raise MessageTooLargeError(
                f"a raw message of {len(payload)} bytes is over the "
                f"{self.capabilities.max_message_bytes}-byte limit of {type(self).__name__} "
                f"on channel {topic!r}; nothing was sent"
            )
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


class PubSubDelivery(AtMostOnceDelivery["PubSubSubscription"]):
    """A received Pub/Sub message; ack, nack and reject only free its prefetch slot
    (Redis keeps nothing: a nacked one is handed out again by this process)."""

    __slots__ = ("_payload",)

    def __init__(
        self, owner: PubSubSubscription, payload: bytes, number: int, attempt: int = 1
    ) -> None:
        message_id = f"{owner.topic}/{owner.instance}/{number}"
        super().__init__(owner, decode_message(payload), attempt=attempt, message_id=message_id)
        self._payload = payload

    def _again(self, delay: float) -> None:
        self._owner.redeliver_later(self._payload, self.message_id, self.attempt + 1, delay)


class PubSubSubscription(Subscription):
    """Iterates the messages of one channel."""

    def __init__(self, adapter: RedisPubSubAdapter, topic: str, options: SubscribeOptions) -> None:
        self.adapter = adapter
        self.topic = topic
        self.options = options
        self.instance = adapter.instance
        self._pubsub: Any = None
        self._closed = False
        self._outstanding = 0
        self._slot_free = asyncio.Event()
        self._number = 0
        self._again: list[PubSubDelivery] = []
        self._redeliveries = Redeliveries()
        # Liveness of the subscribe connection (see the module's docstring).
        self._heard = True  # something arrived since the last silent read
        self._silent_since = time.monotonic()
        self._pinged_at: float | None = None

    async def start(self) -> None:
        """Subscribe and wait for Redis's confirmation, so later publishes arrive."""
        s = self.adapter.settings
        self._pubsub = self.adapter.client.pubsub()
        try:
            with map_exceptions(
                CLIENT_ERRORS,
                what=(
                    f"subscribing to channel {self.topic!r} on Redis at {s.masked_url} "
                    f"(within connect_timeout, {s.connect_timeout:g}s)"
                ),
            ):
                # Bounded as a whole: on a silent endpoint redis-py's own retries of the
                # connection handshake would take minutes.
                async with asyncio.timeout(s.connect_timeout):
                    await self._subscribe(s.sharded)
        except BaseException:
            await self.close()
            raise
        self._silent_since = time.monotonic()

    async def _subscribe(self, sharded: bool) -> None:
        # The group's member channel too: Redis counts the group's live members.
        channels = (self.topic, *self.adapter.member_channels(self.topic, self.options.group))
        if sharded:
            await self._pubsub.ssubscribe(*channels)
        else:
            await self._pubsub.subscribe(*channels)
        kind = "ssubscribe" if sharded else "subscribe"
        confirmed = 0
        while confirmed < len(channels):
            message = await self._pubsub.get_message(timeout=1.0)
            if message is not None and message["type"] == kind:
                confirmed += 1

    def release(self) -> None:
        self._outstanding -= 1
        self._slot_free.set()

    def redeliver_later(self, payload: bytes, message_id: str, attempt: int, delay: float) -> None:
        """Hand ``payload`` out again after ``delay`` seconds (local redelivery)."""
        number = int(message_id.rsplit("/", 1)[-1])

        def due() -> None:
            self._again.append(PubSubDelivery(self, payload, number, attempt))
            self._slot_free.set()

        self._redeliveries.later(delay, due)

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        prefetch = max(1, self.options.prefetch)
        kinds: tuple[str, bytes] = (
            ("smessage", b"smessage") if self.adapter.settings.sharded else ("message", b"message")
        )
        while not self._closed:
            if self._outstanding >= prefetch:
                self._slot_free.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):  # no task per wait (wait_for makes one)
                        await self._slot_free.wait()
                continue
            if self._again:
                self._outstanding += 1
                yield self._again.pop(0)
                continue
            try:
                payload = self._buffered(kinds)
                if type(payload) is tuple:  # not a message: redis-py's bookkeeping
                    self._heard = True
                    await self._pubsub.handle_message(payload[0])
                    continue
                if payload is None:
                    asked = time.monotonic()
                    message = await self._pubsub.get_message(
                        timeout=0.05 if self._redeliveries else self._wait(asked)
                    )
                    if message is None:
                        await self._keep_alive(asked)
                        continue
                    self._heard = True  # a pong too
                    if message["type"] != kinds[0] or self._closed:
                        continue
                    payload = message["data"]
                else:
                    self._heard = True
            except (RedisError, OSError, AttributeError, TimeoutError) as exc:
                if self._closed:  # closed under our feet: the iteration just ends
                    return
                raise translate(
                    exc,
                    {Exception: ConnectionLostError},
                    what=(
                        f"the Pub/Sub connection of channel {self.topic!r} on Redis at "
                        f"{self.adapter.settings.masked_url}"
                    ),
                    hint=("messages published until it is back are lost (Pub/Sub keeps nothing)"),
                ) from exc
            if self._closed:
                continue
            self._number += 1
            self._outstanding += 1
            yield PubSubDelivery(self, payload, self._number)

    def _wait(self, now: float) -> float:
        """How long a read may wait for a message: a second at most, less when the
        connection's next liveness check is due sooner."""
        s = self.adapter.settings
        if self._heard:
            due = now + s.ping_interval
        elif self._pinged_at is not None:
            due = self._pinged_at + s.ping_timeout
        else:
            due = self._silent_since + s.ping_interval
        return min(1.0, max(0.01, due - now))

    async def _keep_alive(self, asked: float) -> None:
        """After a read that heard nothing (started at ``asked``): PING a connection
        silent for ``ping_interval``; raise TimeoutError when the PING stays unanswered
        for ``ping_timeout``."""
        if self._heard:  # the silence began with the read that just came back empty
            self._heard, self._silent_since, self._pinged_at = False, asked, None
        s = self.adapter.settings
        now = time.monotonic()
        if self._pinged_at is not None:
            if now - self._pinged_at >= s.ping_timeout:
                raise TimeoutError(
                    f"no reply to a PING for {now - self._pinged_at:.1f}s (ping_timeout="
                    f"{s.ping_timeout:g}s) after {self._pinged_at - self._silent_since:.1f}s "
                    "of silence: the connection stopped answering without closing"
                )
        elif now - self._silent_since >= s.ping_interval and not self._closed:
            self._pinged_at = now
            # Only written: the reply arrives as a ``pong`` message through the reads.
            async with asyncio.timeout(min(s.ping_timeout, s.connect_timeout)):
                await self._pubsub.ping()

    def _buffered(self, kinds: tuple[str, bytes]) -> Any:
        """The data of the next message already read from the socket (no I/O, no
        timeout): ``None`` when nothing complete is buffered, ``(reply,)`` for a
        reply that is not a message of this channel's kind.

        ``get_message`` costs several times more per message than the rest of
        this loop (a retry wrapper, a timeout, a dict per message); when a burst
        arrives, its messages after the first are taken straight from the
        connection's hiredis reader, and only the first waits in ``get_message``.
        Without hiredis (or with internals this does not know) it returns ``None``
        and every message goes through ``get_message``.
        """
        conn = self._pubsub.connection if self._pubsub is not None else None
        reader = getattr(getattr(conn, "_parser", None), "_reader", None)
        if reader is None or _NOT_ENOUGH_DATA is None or not hasattr(reader, "gets"):
            return None
        reply = reader.gets()
        if reply is _NOT_ENOUGH_DATA or reply is False:
            return None
        if isinstance(reply, BaseException):
            raise reply if isinstance(reply, RedisError | OSError) else RedisError(str(reply))
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == kinds[1]:
            return reply[2]
        return (reply,)

    async def close(self) -> None:
        """Unsubscribe and close the connection (bounded: Redis may be unreachable)."""
        if self._closed:
            return
        self._closed = True
        self._redeliveries.drop()
        self._again.clear()
        pubsub, self._pubsub = self._pubsub, None
        self.adapter.forget(self)
        if pubsub is None:
            return
        try:
            await asyncio.wait_for(pubsub.aclose(), 5.0)
        except BaseException as exc:
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and task and task.cancelling():
                raise
            log.debug("closing the Pub/Sub connection of %s failed: %r", self.topic, exc)
