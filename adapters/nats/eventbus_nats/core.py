"""The core NATS adapter: ``nats+core://`` URLs, at-most-once, nothing stored.

A topic is a subject; a group is a queue group (its members compete, every
group gets each message). A message published while no member of a group is
subscribed is gone for that group, a message whose handler fails is not
redelivered by the server, and new groups cannot replay: the capabilities say
so and the conformance suite skips those cases with the reason. Use
``nats://`` (JetStream) when messages must not be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSub

from eventbus.adapter import (
    Capabilities,
    Delivery,
    HealthReport,
    ReadRecord,
    SubscribeOptions,
    Subscription,
)
from eventbus.adapters_util import AtMostOnceDelivery, Redeliveries, map_exceptions
from eventbus.envelope import Envelope
from eventbus.errors import ConnectionLostError, MessageTooLargeError, TopicNotFoundError
from eventbus.raw_message import RawMessage

from .codec import check_raw_size, decode, encode_block, raw_block
from .connection import CLIENT_ERRORS, NatsAdapterBase
from .provision import check_subject
from .wire import flush, hpub, write

log = logging.getLogger("eventbus.nats")

_REPORT_EVERY = 10.0  # seconds between two lines about drops while they go on


def _whole(seconds: float) -> int:
    """nats-py's flush() takes whole seconds."""
    return max(1, math.ceil(seconds))


class NatsCoreAdapter(NatsAdapterBase):
    """Core NATS through nats-py: ``nats+core://host:4222[?options]`` (at-most-once).

    ``NatsCoreAdapter(url)``, or ``NatsCoreAdapter(settings=..., client=nc)`` with a
    nats-py client you connected yourself (used as it is, never closed here). Nothing
    is stored: a group gets what is published once it is subscribed, whatever
    start_from says.
    """

    schemes = ("nats+core",)
    stronger = "nats:// (JetStream: a durable stream per topic, explicit acks and redelivery)"

    jetstream = False
    role = "core adapter"
    other_kind = "NatsCoreAdapter is core NATS only; use NatsAdapter for {}"

    def _setup(self, client: Client | None) -> None:
        super()._setup(client)
        # A broker that stores nothing (no subscriber, no message; at-most-once: the
        # server never sends a message again), with groups (queue groups) and headers.
        self.capabilities = self._with_limits(Capabilities.EPHEMERAL)
        self._subscriptions: set[CoreSubscription] = set()

    async def _ready(self) -> Client:
        return await self._connection.open(self._prepare)

    async def _prepare(self, client: Client) -> None:
        self._learn_limits(client)

    async def close(self) -> None:
        """Close every subscription, then the connection (unless the user gave it)."""
        for subscription in list(self._subscriptions):
            await subscription.close()
        self._subscriptions.clear()
        await self._connection.close()

    async def health(self) -> HealthReport:
        s = self.settings
        try:
            client = await self._ready()
            if not client.is_connected:
                return HealthReport(
                    False, f"NATS at {s.masked_url} is not connected (reconnecting)"
                )
            await flush(client, 1)  # a PING answered within a second
        except Exception as exc:
            return HealthReport(False, f"NATS at {s.masked_url}: {type(exc).__name__}: {exc}")
        subscriptions = list(self._subscriptions)
        return HealthReport(
            True,
            f"NATS at {s.masked_url} answered a PING",
            {
                "mode": "core (at-most-once)",
                # Waiting for slow handlers, and dropped past pending_msgs/pending_bytes.
                "buffered_bytes": str(sum(sub.buffered_bytes for sub in subscriptions)),
                "dropped": str(sum(sub.dropped for sub in subscriptions)),
            },
        )

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        """Write every message, then one PING/PONG: the server has read them all.

        Core NATS has no per-message acknowledgement: the messages reached the
        server, which forwards them to whoever is subscribed now.
        """
        check_subject(topic)
        client = await self._ready()  # the server's max_payload is learnt at connect
        limit = self.capabilities.max_message_bytes
        commands = []
        size = largest = 0
        for envelope in envelopes:
            block, body = encode_block(envelope, None)
            length = len(block) + len(body)
            if length > limit:
                self.check_size(topic, envelope, length)
            commands.append(hpub(topic, "", block, body))
            size += len(body)
            largest = max(largest, length)
        if not commands:
            return
        await self._send(client, topic, commands, size, largest)

    async def _send(
        self, client: Client, topic: str, commands: list[bytes], size: int, largest: int
    ) -> None:
        # One buffer for the whole batch, then one PING/PONG.
        if client.max_payload and largest > client.max_payload:
            # The server would drop the connection for it (a server reached after a
            # reconnect may take less than the one of the first connect).
            raise MessageTooLargeError(
                f"a message of {largest} bytes to {topic!r} is over the {client.max_payload}-"
                f"byte max_payload of the NATS server at {self.settings.masked_url}; nothing "
                "was sent. Keep events small: reference large data by id or URL."
            )
        with map_exceptions(
            CLIENT_ERRORS,
            what=f"sending {len(commands)} message(s) to "
            f"{topic!r} on NATS at {self.settings.masked_url}",
            hint="the server did not confirm them; publish again",
        ):
            await write(client, commands, len(commands), size)
            await flush(client, _whole(self.settings.publish_timeout))

    async def publish_raw(self, topic: str, message: RawMessage) -> None:
        """Send ``message``'s payload with its headers as NATS headers, byte for byte
        (how a foreign producer's message looks)."""
        check_subject(topic)
        client = await self._ready()
        payload = message.payload
        block = raw_block(topic, message.headers)
        check_raw_size(topic, block, payload, self.capabilities.max_message_bytes)
        await self._send(
            client,
            topic,
            [hpub(topic, "", block, payload)],
            len(payload),
            len(block) + len(payload),
        )

    async def read(self, topic: str, *, limit: int | None = None) -> list[ReadRecord]:
        """Nothing to read: core NATS stores no message (TopicNotFoundError, always)."""
        check_subject(topic)
        raise TopicNotFoundError(
            f"core NATS stores nothing, so there is no message of {topic!r} to read at "
            f"{self.settings.masked_url} (dead letters published here reached only whoever "
            "listened then); use nats:// (JetStream) to keep them"
        )

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        """Join queue group ``options.group`` on subject ``topic``; returns once the
        server has the subscription (a message published afterwards reaches it)."""
        check_subject(topic)
        await self._ready()
        subscription = CoreSubscription(self, topic, options)
        with map_exceptions(
            CLIENT_ERRORS, what=f"subscribing to {topic!r} on NATS at {self.settings.masked_url}"
        ):
            try:
                await subscription.start()
            except BaseException:
                await subscription.close()
                raise
        self._subscriptions.add(subscription)
        return subscription

    def forget(self, subscription: CoreSubscription) -> None:
        self._subscriptions.discard(subscription)


class CoreDelivery(AtMostOnceDelivery["CoreSubscription"]):
    """A core NATS message: there is nothing to tell the server when it is settled."""

    __slots__ = ("_msg",)

    def __init__(self, owner: CoreSubscription, msg: Msg, number: int, attempt: int) -> None:
        message_id = f"{owner.topic}/{number}"
        super().__init__(
            owner, decode(msg.headers, msg.data), attempt=attempt, message_id=message_id
        )
        self._msg = msg

    def _again(self, delay: float) -> None:
        self._owner.redeliver_later(self._msg, self.attempt + 1, delay)


class CoreSubscription(Subscription):
    """A queue-group subscription; at most ``prefetch`` deliveries unsettled, at most
    ``pending_msgs`` / ``pending_bytes`` waiting."""

    def __init__(self, adapter: NatsCoreAdapter, topic: str, options: SubscribeOptions) -> None:
        self.adapter = adapter
        self.topic = topic
        self.options = options
        self.prefetch = max(1, options.prefetch)
        self._ready: deque[tuple[Msg, int]] = deque()
        self.buffered_bytes = 0
        self.dropped = 0
        self._dropped_reported = 0
        self._reported_at = 0.0
        self._max_msgs = adapter.settings.pending_msgs
        self._max_bytes = adapter.settings.pending_bytes
        self._redeliveries = Redeliveries()
        self._unsettled = 0
        self._count = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._sub: NatsSub | None = None

    async def start(self) -> None:
        client = self.adapter.client
        # nats-py's own queue before the callback gets the same bounds (the callback
        # only moves a message into _ready, so it stays near empty).
        self._sub = await client.subscribe(
            self.topic,
            queue=self.options.group,
            cb=self._on_msg,
            pending_msgs_limit=self._max_msgs,
            pending_bytes_limit=self._max_bytes,
        )
        # The server knows of the subscription once it answered a PING sent after it.
        await flush(client, max(1, math.ceil(self.adapter.settings.request_timeout)))

    async def _on_msg(self, msg: Msg) -> None:
        if self._closed:
            return
        size = len(msg.data)
        if len(self._ready) >= self._max_msgs or self.buffered_bytes + size > self._max_bytes:
            self.dropped += 1
            self._report_drops()
            return
        self.buffered_bytes += size
        self._ready.append((msg, 1))
        self._wake.set()

    def _report_drops(self) -> None:
        now = time.monotonic()
        if now - self._reported_at < _REPORT_EVERY:
            return
        self._reported_at = now
        new, self._dropped_reported = self.dropped - self._dropped_reported, self.dropped
        log.warning(
            "core NATS subscription to %r (group %r) is slower than its publishers: %d "
            "message(s) waiting (%d bytes; pending_msgs=%d, pending_bytes=%d), dropping %d "
            "arrival(s) (%d in all; at-most-once: the server never sends them again); use "
            "nats:// (JetStream) to keep them, or more members",
            self.topic,
            self.options.group,
            len(self._ready),
            self.buffered_bytes,
            self._max_msgs,
            self._max_bytes,
            new,
            self.dropped,
        )

    def redeliver_later(self, msg: Msg, attempt: int, delay: float) -> None:
        """Hand ``msg`` out again after ``delay`` seconds (local, in-memory redelivery)."""

        def due() -> None:
            self.buffered_bytes += len(msg.data)
            self._ready.append((msg, attempt))
            self._wake.set()

        self._redeliveries.later(delay, due)

    def release(self) -> None:
        self._unsettled -= 1
        self._wake.set()

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while not self._closed:
            if self._ready and self._unsettled < self.prefetch:
                self._count += 1
                self._unsettled += 1
                msg, attempt = self._ready.popleft()
                self.buffered_bytes -= len(msg.data)
                yield CoreDelivery(self, msg, self._count, attempt)
                continue
            if self.adapter.client.is_closed:
                raise ConnectionLostError(
                    f"core NATS subscription to {self.topic!r} lost its connection to "
                    f"{self.adapter.settings.masked_url}"
                )
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):  # no task per wait (wait_for makes one)
                    await self._wake.wait()

    async def close(self) -> None:
        """Unsubscribe; messages received and not handed out are dropped (at-most-once)."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        waiting = self._redeliveries.drop()
        if waiting:
            log.info(
                "core NATS subscription to %r closed with %d nacked message(s) waiting "
                "for local redelivery; they are dropped (at-most-once)",
                self.topic,
                waiting,
            )
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._ready:
            log.info(
                "core NATS subscription to %r closed with %d message(s) not handed "
                "out; they are dropped (at-most-once)",
                self.topic,
                len(self._ready),
            )
        if self.dropped:
            log.info(
                "core NATS subscription to %r dropped %d message(s) in all while it was "
                "slower than its publishers",
                self.topic,
                self.dropped,
            )
        self._ready.clear()
        self.buffered_bytes = 0
        self.adapter.forget(self)
