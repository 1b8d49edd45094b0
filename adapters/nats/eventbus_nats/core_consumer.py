"""A core NATS subscription: one member of a queue group, at-most-once.

- Messages arrive as fast as they are published; those not yet handed out wait
  in the process, up to ``pending_msgs`` messages and ``pending_bytes`` payload
  bytes per subscription (URL options). Past that, arrivals are dropped (the
  server never redelivers anyway: at-most-once by declaration), counted (the
  adapter's ``health()`` info ``dropped``) and logged: the first drop at once,
  then one line per ten seconds while it lasts. Unbounded, a slow handler grew
  the process until it was killed and lost everything at once.
- ``prefetch`` bounds the deliveries handed out and unsettled.
- Settling tells the server nothing; a nack (the idempotency store holding back
  a duplicate) is handed out again by this subscription after the delay, from
  memory: lost if the process stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSub

from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.errors import ConnectionLostError

from .codec import decode, raw_headers

if TYPE_CHECKING:
    from .core import NatsCoreAdapter

log = logging.getLogger("eventbus.nats")

_REPORT_EVERY = 10.0  # seconds between two lines about drops while they go on


class CoreDelivery(Delivery):
    """A core NATS message: there is nothing to tell the server when it is settled."""

    __slots__ = ("_msg", "_owner")

    def __init__(self, owner: CoreSubscription, msg: Msg, number: int, attempt: int) -> None:
        envelope, error = decode(msg.headers, msg.data)
        super().__init__(topic=owner.topic, group=owner.options.group, envelope=envelope,
                         attempt=attempt, message_id=f"{owner.topic}/{number}",
                         raw=None if envelope is not None else msg.data, decode_error=error,
                         raw_headers=None if envelope is not None else raw_headers(msg.headers))
        self._owner = owner
        self._msg = msg

    async def _ack(self) -> None:
        self._owner.release()

    async def _nack(self, delay: float) -> None:
        # The server cannot redeliver (capabilities.redelivery is False, so the bus
        # retries in process and dead-letters rather than nacking). A nack that still
        # comes (a duplicate held back by the idempotency store) is redelivered by
        # this subscription after ``delay``: kept in memory, lost if the process ends.
        self._owner.release()
        self._owner.redeliver_later(self._msg, self.attempt + 1, delay)

    async def _reject(self) -> None:
        self._owner.release()


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
        self._timers: set[asyncio.TimerHandle] = set()
        self._unsettled = 0
        self._count = 0
        self._wake = asyncio.Event()
        self._closed = False
        self._sub: NatsSub | None = None

    async def start(self) -> None:
        client = self.adapter.client
        # nats-py's own queue before the callback gets the same bounds (the callback
        # only moves a message into _ready, so it stays near empty).
        self._sub = await client.subscribe(self.topic, queue=self.options.group, cb=self._on_msg,
                                           pending_msgs_limit=self._max_msgs,
                                           pending_bytes_limit=self._max_bytes)
        # The server knows of the subscription once it answered a PING sent after it.
        await client.flush(max(1, math.ceil(self.adapter.settings.request_timeout)))

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
            "nats:// (JetStream) to keep them, or more members", self.topic,
            self.options.group, len(self._ready), self.buffered_bytes, self._max_msgs,
            self._max_bytes, new, self.dropped)

    def redeliver_later(self, msg: Msg, attempt: int, delay: float) -> None:
        """Hand ``msg`` out again after ``delay`` seconds (local, in-memory redelivery)."""
        def due() -> None:
            self._timers.discard(handle)
            if not self._closed:
                self.buffered_bytes += len(msg.data)
                self._ready.append((msg, attempt))
                self._wake.set()

        handle = asyncio.get_running_loop().call_later(delay, due)
        self._timers.add(handle)

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
                    f"{self.adapter.settings.masked_url}")
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
        for handle in self._timers:
            handle.cancel()
        if self._timers:
            log.info("core NATS subscription to %r closed with %d nacked message(s) waiting "
                     "for local redelivery; they are dropped (at-most-once)", self.topic,
                     len(self._timers))
        self._timers.clear()
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._ready:
            log.info("core NATS subscription to %r closed with %d message(s) not handed "
                     "out; they are dropped (at-most-once)", self.topic, len(self._ready))
        if self.dropped:
            log.info("core NATS subscription to %r dropped %d message(s) in all while it was "
                     "slower than its publishers", self.topic, self.dropped)
        self._ready.clear()
        self.buffered_bytes = 0
        self.adapter.forget(self)
