"""What both Redis adapters share: the client, connecting, health, pipelined sending."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from eventbus.adapter import Adapter, HealthReport
from eventbus.envelope import Envelope
from eventbus.errors import BatchPublishError, BrokerConnectionError, PublishError

from . import bulk
from .client import CONNECTION_ERRORS, new_client, quiet_close
from .pipeline import Batcher, Command
from .settings import RedisSettings

log = logging.getLogger("eventbus.redis")


class RedisAdapter(Adapter):
    """What both Redis modes share: the client, connecting, health, pipelined sending."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.settings = RedisSettings.from_url(url)
        self._client: Redis | None = None
        self._batcher: Batcher | None = None
        self._subscriptions: set[Any] = set()
        self.instance = uuid.uuid4().hex[:8]

    def new_client(self) -> Redis:
        """A client with this URL's settings (see :func:`.client.new_client`)."""
        return new_client(self.settings)

    @property
    def client(self) -> Redis:
        if self._client is None:
            self._client = self.new_client()
            self._batcher = Batcher(self._client)
        return self._client

    @property
    def batcher(self) -> Batcher:
        _ = self.client
        assert self._batcher is not None
        return self._batcher

    async def connect(self) -> None:
        """PING once within ``connect_timeout``; fail with the masked URL if no answer."""
        s = self.settings
        probe = self.new_client()
        probe.connection_pool.connection_kwargs["retry"] = Retry(ExponentialBackoff(), 0)
        try:
            await asyncio.wait_for(probe.ping(), s.connect_timeout)
        except (RedisError, *CONNECTION_ERRORS) as exc:
            raise BrokerConnectionError(
                f"cannot connect to Redis at {s.masked_url} within {s.connect_timeout:g}s "
                f"({type(exc).__name__}: {exc or 'timed out'}); check that it is reachable "
                "and that the password and TLS settings are right"
            ) from exc
        finally:
            await quiet_close(probe)
        _ = self.client

    async def close(self) -> None:
        """Close every subscription, wait for publishes in flight, close the connections.

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
        if client is not None:
            await quiet_close(client)

    def forget(self, subscription: Any) -> None:
        """Called by a subscription when it closes."""
        self._subscriptions.discard(subscription)

    async def health(self) -> HealthReport:
        """PING on a fresh connection (a pooled one could hide a refused reconnect),
        after checking that no consumer's read has gone unanswered (a connection that
        stopped answering without closing, see ``RedisSettings.half_open_bound``)."""
        s = self.settings
        info = {"mode": s.mode, "server": f"{s.host}:{s.port}/{s.db}"}
        if self._client is None:
            return HealthReport(False, f"Redis adapter for {s.masked_url} is not connected; "
                                "call connect() (or start the bus) first", info)
        for subscription in list(self._subscriptions):
            late = getattr(subscription, "overdue", lambda: None)()
            if late is not None:
                return HealthReport(False, (
                    f"a read of stream {subscription.topic!r} as group "
                    f"{subscription.group!r} on Redis at {s.masked_url} has had no answer "
                    f"for {late + s.read_timeout:.1f}s (read_timeout {s.read_timeout:g}s): "
                    "the connection stopped answering; redis-py is replacing it"), info)
        probe = self.new_client()
        probe.connection_pool.connection_kwargs["retry"] = Retry(ExponentialBackoff(), 0)
        try:
            await asyncio.wait_for(probe.ping(), s.connect_timeout)
        except Exception as exc:
            return HealthReport(False, f"Redis at {s.masked_url} does not answer: "
                                f"{type(exc).__name__}: {exc or 'timed out'}", info)
        finally:
            await quiet_close(probe)
        return HealthReport(True, f"Redis at {s.masked_url} answered PING", info)

    async def send(self, topic: str, envelopes: Sequence[Envelope],
                   commands: list[Command], counts: list[int] | None = None) -> None:
        """Send one command per envelope (pipelined; or a command per ``counts[i]``
        envelopes, see ``bulk``) and raise for those Redis refused."""
        try:
            replies = await self.batcher.run(commands)
            if counts is not None:
                replies = bulk.expand(replies, counts)
        except CONNECTION_ERRORS as exc:
            raise BrokerConnectionError(
                f"Redis at {self.settings.masked_url} did not confirm any of {len(commands)} "
                f"message(s) to {topic!r}: {type(exc).__name__}: {exc}"
            ) from exc
        failures: dict[int, Exception] = {}
        for index, reply in enumerate(replies):
            if isinstance(reply, BaseException):
                envelope = envelopes[index] if index < len(envelopes) else None
                what = f"event {envelope.id} ({envelope.type})" if envelope else "a message"
                error = PublishError(f"Redis refused {what} to {topic!r}: "
                                     f"{type(reply).__name__}: {reply}")
                error.__cause__ = reply
                failures[index] = error
        if failures:
            raise BatchPublishError(
                f"{len(failures)} of {len(replies)} messages to Redis topic {topic!r} were "
                f"not confirmed (indexes {sorted(failures)}); see .failures",
                failures, len(replies),
            )
