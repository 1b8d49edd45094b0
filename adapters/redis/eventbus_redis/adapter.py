"""The Redis adapters' shared base and the Streams adapter (``redis+streams://``).

:class:`RedisAdapter` is what both modes share (the client, connecting, health,
pipelined sending); :class:`RedisStreamsAdapter` is Streams (consumer groups, at
least once). The Pub/Sub adapter (``redis://``) is in :mod:`eventbus_redis.pubsub`.

Example::

    adapter = RedisStreamsAdapter("redis+streams://localhost:6379/0?maxlen=100000")
    await adapter.connect()
    await adapter.publish("orders", [envelope])

    # Or with settings made in code and a redis-py client of your own (used as it
    # is, never closed by the adapter; it must not decode replies):
    adapter = RedisStreamsAdapter(settings=RedisSettings(host="redis.internal"),
                                  client=Redis(host="redis.internal", ssl=True))
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from eventbus.adapter import Capabilities, HealthReport, ReadRecord, SubscribeOptions, Subscription
from eventbus.adapters_util import ConfiguredAdapter, map_exceptions
from eventbus.envelope import Envelope
from eventbus.errors import (
    BatchPublishError,
    ConfigurationError,
    MessageTooLargeError,
    ProvisioningError,
    PublishError,
    TopicNotFoundError,
)
from eventbus.raw_message import RawMessage

from .codec import decode_fields, encode_args, encode_fields, fields_size, raw_fields
from .connection import CLIENT_ERRORS, new_client, quiet_close
from .group_route import route_key, subscribe_with_route
from .publish import MAX_PER_SCRIPT, Batcher, Command, expand, pipeline_batcher, xadd_many
from .settings import RedisSettings

log = logging.getLogger("eventbus.redis")


class RedisAdapter(ConfiguredAdapter[RedisSettings, Redis]):
    """What both Redis modes share: the client, connecting, health, pipelined sending.

    Made from a URL, or from ``settings=`` and optionally ``client=``: a redis-py
    client the application configured, used as it is (its pool, retries, TLS) and
    never closed by the adapter.
    """

    settings_type = RedisSettings

    def _setup(self, client: Redis | None) -> None:
        s = self.settings
        if client is not None and client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ConfigurationError(
                f"the redis-py client given to {type(self).__name__} for {s.masked_url} "
                "decodes replies (decode_responses=True), but stream entries and messages "
                "are bytes to the adapter: give it a client made with decode_responses=False"
            )
        self._given = client
        self._client: Redis | None = None
        self._batcher: Batcher | None = None
        self._subscriptions: set[Any] = set()
        self.instance = uuid.uuid4().hex[:8]

    def new_client(self) -> Redis:
        """A client with this adapter's settings (see :func:`.connection.new_client`)."""
        return new_client(self.settings)

    @property
    def client(self) -> Redis:
        """The client every command goes through: the given one, else one of its own."""
        if self._client is None:
            self._client = self._given if self._given is not None else self.new_client()
            s = self.settings
            self._batcher = pipeline_batcher(
                self._client, wait_replicas=s.wait_replicas, wait_timeout=s.wait_timeout
            )
        return self._client

    @property
    def batcher(self) -> Batcher:
        """Gathers each loop turn's commands into one pipeline (see :mod:`.publish`)."""
        _ = self.client
        assert self._batcher is not None
        return self._batcher

    async def _ping(self) -> None:
        """PING within ``connect_timeout``: the given client as it is, else on a fresh
        connection without redis-py's retries (a pooled one could hide a refused
        reconnect, and the retries would outlast the bound)."""
        s = self.settings
        if self._given is not None:
            await asyncio.wait_for(self._given.ping(), s.connect_timeout)
            return
        probe = self.new_client()
        probe.connection_pool.connection_kwargs["retry"] = Retry(ExponentialBackoff(), 0)
        try:
            await asyncio.wait_for(probe.ping(), s.connect_timeout)
        finally:
            await quiet_close(probe)

    async def connect(self) -> None:
        """PING once within ``connect_timeout``; fail with the masked URL if no answer."""
        s = self.settings
        with map_exceptions(
            CLIENT_ERRORS,
            what=f"connecting to Redis at {s.masked_url} (within {s.connect_timeout:g}s)",
            hint="check that it is reachable and that the password and TLS settings are right",
        ):
            await self._ping()
        _ = self.client

    async def close(self) -> None:
        """Close every subscription, wait for publishes in flight, close the connections
        (a client the application gave stays open).

        Reaches the end even when Redis is unreachable: each step is bounded.
        """
        for subscription in list(self._subscriptions):
            try:
                await asyncio.wait_for(subscription.close(), 10.0)
            except Exception as exc:
                log.warning("closing a Redis subscription failed: %s", exc)
        self._subscriptions.clear()
        client, batcher = self._client, self._batcher
        self._client = self._batcher = None
        if batcher is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(batcher.drain(), 10.0)
        if client is not None and client is not self._given:
            await quiet_close(client)

    def forget(self, subscription: Any) -> None:
        """Called by a subscription when it closes."""
        self._subscriptions.discard(subscription)

    async def health(self) -> HealthReport:
        """PING (on a fresh connection unless the client was given), after checking that
        no consumer's read has gone unanswered (a connection that stopped answering
        without closing, see ``RedisSettings.half_open_bound``)."""
        s = self.settings
        info = {"mode": s.mode, "server": s.server}
        if self._client is None:
            return HealthReport(
                False,
                f"Redis adapter for {s.masked_url} is not connected; "
                "call connect() (or start the bus) first",
                info,
            )
        for subscription in list(self._subscriptions):
            late = getattr(subscription, "overdue", lambda: None)()
            if late is not None:
                return HealthReport(
                    False,
                    (
                        f"a read of stream {subscription.topic!r} as group "
                        f"{subscription.group!r} on Redis at {s.masked_url} has had no answer "
                        f"for {late + s.read_timeout:.1f}s (read_timeout {s.read_timeout:g}s): "
                        "the connection stopped answering; redis-py is replacing it"
                    ),
                    info,
                )
        try:
            await self._ping()
        except Exception as exc:
            return HealthReport(
                False,
                f"Redis at {s.masked_url} does not answer: "
                f"{type(exc).__name__}: {exc or 'timed out'}",
                info,
            )
        return HealthReport(True, f"Redis at {s.masked_url} answered PING", info)

    async def send(
        self,
        topic: str,
        envelopes: Sequence[Envelope],
        commands: list[Command],
        counts: list[int] | None = None,
    ) -> None:
        """Send one command per envelope (pipelined; or a command per ``counts[i]``
        envelopes, see ``bulk``) and raise for those Redis refused."""
        with map_exceptions(
            CLIENT_ERRORS,
            what=f"publishing {len(envelopes) or len(commands)} message(s) to {topic!r} on "
            f"Redis at {self.settings.masked_url}",
            hint="none was confirmed; publish them again",
        ):
            replies = await self.batcher.submit(commands)
        if counts is not None:
            replies = expand(replies, counts)
        failures: dict[int, Exception] = {}
        for index, reply in enumerate(replies):
            if isinstance(reply, BaseException) or (reply is None and not self.settings.provision):
                envelope = envelopes[index] if index < len(envelopes) else None
                what = f"event {envelope.id} ({envelope.type})" if envelope else "a message"
                if reply is None:  # XADD NOMKSTREAM: the stream is missing
                    failures[index] = ProvisioningError(
                        f"stream {topic!r} does not exist on Redis at "
                        f"{self.settings.masked_url} and provision=false: {what} was not "
                        "added; create the stream (XGROUP CREATE <stream> <group> $ "
                        "MKSTREAM) or set provision=true"
                    )
                    continue
                error = PublishError(
                    f"Redis refused {what} to {topic!r}: {type(reply).__name__}: {reply}"
                )
                error.__cause__ = reply
                failures[index] = error
        if failures:
            if len(failures) == len(replies) and all(
                isinstance(f, ProvisioningError) for f in failures.values()
            ):
                raise next(iter(failures.values()))
            raise BatchPublishError.partial(failures, len(replies), f"Redis topic {topic!r}")


class RedisStreamsAdapter(RedisAdapter):
    """Redis Streams: ``redis+streams://`` or ``rediss+streams://`` (TLS).

    One stream per topic (trimmed to about ``maxlen`` entries), one consumer group
    per eventbus group, at-least-once with XACK, XAUTOCLAIM of dead consumers'
    entries and delayed redelivery through a sorted set.
    """

    schemes = ("redis+streams", "rediss+streams")

    def _setup(self, client: Redis | None) -> None:
        super()._setup(client)
        if self.settings.mode != "streams":
            raise ValueError(f"{self.settings.masked_url} is a Pub/Sub URL")
        # A durable broker (lease: a pending entry idle past claim_idle is reclaimed by
        # XAUTOCLAIM; each consumer keeps what it holds fresh while handlers run),
        # except:
        self.capabilities = replace(
            Capabilities.DURABLE,
            max_message_bytes=self.settings.max_message_bytes,
            half_open_bound=self.settings.half_open_bound,
            # One stream is one ordered log, but the consumers of a group compete
            # for its entries and a redelivery comes back after later ones.
            ordering="none",
            # The delay is kept by Redis (a sorted set) but waited out by polling.
            native_delay=False,
        )

    def _xadd(
        self, topic: str, fields: dict[Any, Any], *, create: bool = True
    ) -> Callable[[Pipeline], Any]:
        maxlen, nomkstream = self.settings.maxlen or None, not create
        return lambda pipe: pipe.xadd(
            topic, fields, maxlen=maxlen, approximate=True, nomkstream=nomkstream
        )

    async def publish(self, topic: str, envelopes: Sequence[Envelope]) -> None:
        """XADD each envelope (binary mode: attributes as fields); the reply confirms it.

        A batch goes as one script run doing the XADDs (``xadd_many``). With
        ``provision=false`` a missing stream is not created (``NOMKSTREAM``): that is a
        :class:`~eventbus.errors.ProvisioningError`.
        """
        maxlen, create = self.settings.maxlen, self.settings.provision
        if len(envelopes) < 2:
            head: tuple[Any, ...] = (
                "XADD",
                topic,
                *(() if create else ("NOMKSTREAM",)),
                *(("MAXLEN", "~", maxlen) if maxlen else ()),
                "*",
            )
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
            step = MAX_PER_SCRIPT
            parts = [commands[i : i + step] for i in range(0, len(commands), step)]
            await self.send(
                topic,
                envelopes,
                [
                    xadd_many(topic, maxlen, part, create=create)  # type: ignore[arg-type]
                    for part in parts
                ],
                [len(p) for p in parts],
            )
            return
        await self.send(topic, envelopes, commands)

    async def publish_raw(self, topic: str, message: RawMessage) -> None:
        """XADD an entry of ``message``'s headers as fields and its payload as the
        ``body`` field, as another client would write it (see :func:`.codec.raw_fields`);
        how an undecodable dead letter is replayed as it arrived (``provision=false``: to
        an existing stream only)."""
        fields = raw_fields(message.payload, message.headers)
        size = fields_size(
            {name.decode("utf-8", "replace"): value for name, value in fields.items()}
        )
        if size > self.capabilities.max_message_bytes:
            raise MessageTooLargeError(
                f"a raw entry of {size} bytes is over the {self.capabilities.max_message_bytes}"
                f"-byte limit of {type(self).__name__} on topic {topic!r}; nothing was sent"
            )
        await self.send(topic, [], [self._xadd(topic, fields, create=self.settings.provision)])

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        """Join (creating it if new) the consumer group ``options.group`` of ``topic``,
        and of the group's route stream (see :mod:`eventbus_redis.group_route`)."""
        return await subscribe_with_route(self, topic, options)

    def track(self, subscription: Any) -> None:
        """Remember ``subscription`` so :meth:`close` closes it."""
        self._subscriptions.add(subscription)

    async def publish_to_group(self, topic: str, group: str, envelopes: Sequence[Envelope]) -> None:
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
        with map_exceptions(
            CLIENT_ERRORS, what=f"reading {topic!r} on Redis at {self.settings.masked_url}"
        ):
            exists = await client.exists(topic)
            entries = (
                []
                if not exists
                else await client.xrange(
                    topic, "-", "+", count=None if limit is None else max(0, limit) or 1
                )
            )
        if not exists:
            raise TopicNotFoundError(
                f"stream {topic!r} does not exist on Redis at {self.settings.masked_url}: "
                "check the name (reading creates nothing)"
            )
        if limit is not None and limit <= 0:
            return []
        records = []
        for entry_id, fields in entries:
            decoded = decode_fields(fields)
            message_id = f"{topic}/{entry_id.decode()}"
            records.append(
                ReadRecord(
                    topic,
                    message_id,
                    decoded.envelope,
                    None if decoded.envelope else decoded.raw,
                    decoded.error,
                )
            )
        return records
