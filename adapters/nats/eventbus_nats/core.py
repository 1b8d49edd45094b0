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
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

from nats.aio.client import Client

from eventbus.adapter import (
    Adapter,
    Capabilities,
    HealthReport,
    ReadRecord,
    SubscribeOptions,
    Subscription,
)
from eventbus.envelope import Envelope
from eventbus.errors import BrokerConnectionError, MessageTooLargeError, TopicNotFoundError

from .codec import check_raw_size, encode_block, raw_block
from .connection import close_quietly, message_limit, open_connection
from .core_consumer import CoreSubscription
from .provision import check_subject
from .settings import NatsSettings
from .wire import hpub

log = logging.getLogger("eventbus.nats")


def _whole(seconds: float) -> int:
    """nats-py's flush() takes whole seconds."""
    return max(1, math.ceil(seconds))


class NatsCoreAdapter(Adapter):
    """Core NATS through nats-py: ``nats+core://host:4222[?options]`` (at-most-once)."""

    schemes = ("nats+core",)
    stronger = ("nats:// (JetStream: a durable stream per topic, explicit acks and "
                "redelivery)")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.settings = NatsSettings.from_url(url)
        if self.settings.jetstream:
            raise BrokerConnectionError(
                f"NatsCoreAdapter is core NATS only; use NatsAdapter for "
                f"{self.settings.masked_url}")
        self.capabilities = Capabilities(
            persistent=False,  # nothing is stored: no subscriber, no message
            consumer_groups=True,  # queue groups
            fanout=True,
            ordering="none",
            redelivery=False,  # at-most-once: the server never sends a message again
            native_delay=False,
            native_dead_letter=False,
            replay=False,
            headers=True,
            max_message_bytes=self.settings.max_message_bytes,
            dedupe_window=None,
            reconnect=True,
            # PINGs every ping_interval; max_pings_out unanswered in a row mark the
            # connection stale: nats-py drops it and reconnects (health() fails meanwhile).
            half_open_bound=self.settings.half_open_bound,
            browse=True,
            group_route=False,
            raw_publish=True,
        )
        self._client: Client | None = None
        self._subscriptions: set[CoreSubscription] = set()
        self._lock = asyncio.Lock()

    @property
    def client(self) -> Client:
        """The connection (after :meth:`connect`)."""
        if self._client is None:
            raise BrokerConnectionError(
                f"the core NATS adapter for {self.settings.masked_url} is not connected; "
                "call connect() (or start the bus) first")
        return self._client

    async def connect(self) -> None:
        """Connect; fail fast with the masked URL."""
        await self._ready()

    async def _ready(self) -> Client:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                client = await open_connection(self.settings, "core adapter")
                self.capabilities = replace(
                    self.capabilities,
                    max_message_bytes=message_limit(self.settings, client, "core adapter"))
                self._client = client
            return self._client

    async def close(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.close()
        self._subscriptions.clear()
        client, self._client = self._client, None
        if client is not None:
            await close_quietly(client)

    async def health(self) -> HealthReport:
        s = self.settings
        try:
            client = await self._ready()
            if not client.is_connected:
                return HealthReport(False, f"NATS at {s.masked_url} is not connected "
                                    "(reconnecting)")
            await client.flush(1)  # a PING answered within a second
        except Exception as exc:
            return HealthReport(False, f"NATS at {s.masked_url}: {type(exc).__name__}: {exc}")
        subscriptions = list(self._subscriptions)
        return HealthReport(True, f"NATS at {s.masked_url} answered a PING", {
            "mode": "core (at-most-once)",
            # Waiting for slow handlers, and dropped past pending_msgs/pending_bytes.
            "buffered_bytes": str(sum(sub.buffered_bytes for sub in subscriptions)),
            "dropped": str(sum(sub.dropped for sub in subscriptions)),
        })

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

    async def _send(self, client: Client, topic: str, commands: list[bytes], size: int,
                    largest: int) -> None:
        # One buffer for the whole batch, then one PING/PONG.
        if client.max_payload and largest > client.max_payload:
            # The server would drop the connection for it (a server reached after a
            # reconnect may take less than the one of the first connect).
            raise MessageTooLargeError(
                f"a message of {largest} bytes to {topic!r} is over the {client.max_payload}-"
                f"byte max_payload of the NATS server at {self.settings.masked_url}; nothing "
                "was sent. Keep events small: reference large data by id or URL.")
        try:
            await client.write(commands, len(commands), size)  # type: ignore[attr-defined]
            await client.flush(_whole(self.settings.publish_timeout))
        except Exception as exc:
            raise BrokerConnectionError(
                f"NATS at {self.settings.masked_url} did not confirm {len(commands)} "
                f"message(s) to {topic!r}: {type(exc).__name__}: {exc}") from exc

    async def publish_raw(
        self, topic: str, payload: bytes, headers: Mapping[str, bytes] | None = None
    ) -> None:
        """Send ``payload`` with ``headers`` as NATS headers, byte for byte (how a
        foreign producer's message looks)."""
        check_subject(topic)
        client = await self._ready()
        block = raw_block(topic, headers)
        check_raw_size(topic, block, payload, self.capabilities.max_message_bytes)
        await self._send(client, topic, [hpub(topic, "", block, payload)], len(payload),
                         len(block) + len(payload))

    async def read(self, topic: str, *, limit: int | None = None) -> list[ReadRecord]:
        """Nothing to read: core NATS stores no message (TopicNotFoundError, always)."""
        check_subject(topic)
        raise TopicNotFoundError(
            f"core NATS stores nothing, so there is no message of {topic!r} to read at "
            f"{self.settings.masked_url} (dead letters published here reached only whoever "
            "listened then); use nats:// (JetStream) to keep them")

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        """Join queue group ``options.group`` on subject ``topic``; returns once the
        server has the subscription (a message published afterwards reaches it)."""
        check_subject(topic)
        client = await self._ready()
        subscription = CoreSubscription(self, topic, options)
        try:
            await subscription.start()
        except Exception as exc:
            await subscription.close()
            raise BrokerConnectionError(
                f"cannot subscribe to {topic!r} on NATS at {self.settings.masked_url}: "
                f"{type(exc).__name__}: {exc}") from exc
        del client
        self._subscriptions.add(subscription)
        return subscription

    def forget(self, subscription: CoreSubscription) -> None:
        self._subscriptions.discard(subscription)
