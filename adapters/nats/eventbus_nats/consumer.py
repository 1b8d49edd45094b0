"""A JetStream subscription: one member of a group's durable pull consumer.

- Pull requests (``$JS.API.CONSUMER.MSG.NEXT``) go out pipelined on a private
  inbox, each asking for at most the free prefetch room and expiring after
  ``fetch_timeout``; a member never holds more than ``prefetch`` deliveries
  handed out and unsettled.
- ``ack`` is ``+ACK``, ``nack(delay)`` is ``-NAK {"delay": ...}`` (the server waits,
  not the client), ``reject`` is ``+TERM`` (the bus has dead-lettered it already).
  The attempt number is the server's delivery count from the message metadata,
  less the deliveries given back unread (see ``close()``).
- Every ``ack_wait / 3`` seconds each held message (waiting or with a running
  handler) gets ``+WPI`` (in progress), so a slow handler is not redelivered
  mid-run while the member lives.
- ``close()`` stops asking, waits for its open requests to expire (at most
  ``fetch_timeout``) so no message is left on an inbox nobody reads, drains the
  inbox (what nats-py still queues for it is read, not dropped), then naks
  everything it holds and not settled: it comes back at once to another member.
  A message at its last delivery (``max_deliver``) is never given back: what it
  still holds of those (arriving meanwhile too) gets one last, bounded attempt to
  be carried over to the group's route (:mod:`eventbus_nats.group_route`).
  What it fetched and never handed out is recorded as given back unread
  (:mod:`eventbus.given_back`), so those deliveries spend no crash-loop budget.
- A live consumer answers every expired pull request (a 408 status); when
  requests go unanswered for ``_SILENCE`` seconds, and every ``_LOOK_EVERY``
  seconds anyway, the member has the :class:`~eventbus_nats.provision.ConsumerKeeper`
  look at the consumer: its position is noted, and a consumer found gone is
  created again where the group was.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSub

from eventbus import tasks
from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.errors import ConnectionLostError
from eventbus.given_back import given_back
from eventbus.tasks import stop_tasks

from .codec import decode
from .group_route import carry_left_over, carry_over, delivered_before
from .wire import ack_command, ack_facts, write

if TYPE_CHECKING:
    from .adapter import NatsAdapter

log = logging.getLogger("eventbus.nats")

_STATUS = "Status"
_HEARTBEAT = "100"
_GRACE = 0.25  # seconds after a request's expiry for its last messages to arrive
_LOOK_EVERY = 10.0  # seconds between looks at the consumer (its position, its existence)


class JetStreamDelivery(Delivery):
    """A message from a pull consumer; settling it answers the server at once."""

    __slots__ = ("_msg", "_owner", "handed_at")
    stable_id = True  # message_id is the stream sequence: the same on every redelivery

    def __init__(self, owner: JetStreamSubscription, msg: Msg) -> None:
        counted, message_id = owner.counted(msg)
        super().__init__(
            decode(msg.headers, msg.data),
            topic=owner.topic,
            group=owner.options.group,
            attempt=delivered_before(msg.headers) + counted,
            message_id=message_id,
        )
        self._owner = owner
        self._msg = msg
        self.handed_at = time.monotonic()

    def given_back_unread(self) -> None:
        """Held past the adapter when its subscription closed; the bus never had it."""
        self._owner._unread(self._msg)

    @property
    def stale(self) -> bool:
        """True once its subscription closed: the message was given back (naked)
        and the server hands it to another member."""
        return self._owner.closed

    async def _ack(self) -> None:
        # +ACK written straight into the connection's buffer (what Msg.ack does,
        # without its subject validation and command formatting per message).
        await self._answer(
            write(self._owner.adapter.client, [ack_command(self._msg.reply)], 1, 4), "ack"
        )

    async def _nack(self, delay: float) -> None:
        await self._answer(self._msg.nak(delay=delay if delay > 0 else None), "nak")

    async def _reject(self) -> None:
        await self._answer(self._msg.term(), "term")

    async def _answer(self, call: Coroutine[Any, Any, None], what: str) -> None:
        try:
            await call
        except Exception as exc:
            # Never left without an owner: the subscription stops keeping it alive,
            # so the server redelivers it after ack_wait.
            log.warning(
                "%s of message %s on %r group %r failed (%s: %s); the server "
                "redelivers it after ack_wait",
                what,
                self.message_id,
                self.topic,
                self.group,
                type(exc).__name__,
                exc,
            )
            self._owner.release(self)
            raise
        self._owner.release(self)


class JetStreamSubscription(Subscription):
    """One member of ``options.group`` consuming ``topic``'s stream."""

    def __init__(
        self,
        adapter: NatsAdapter,
        topic: str,
        stream: str,
        consumer: str,
        options: SubscribeOptions,
    ) -> None:
        self.adapter = adapter
        self.topic = topic
        self.stream = stream
        self.consumer = consumer
        self.options = options
        self.prefetch = max(1, options.prefetch)
        # Deliveries of this consumer fetched and given back unread, by message_id;
        # shared by every member in the process (a bus started anew keeps it).
        self.unread = given_back(f"nats {adapter.settings.masked_url} {stream} {consumer}")
        self._ready: deque[list[Any]] = deque()  # [msg, last kept alive]
        self._held: set[JetStreamDelivery] = set()
        self._requests: deque[list[float]] = deque()  # [deadline, messages still due]
        self._changed = asyncio.Event()
        self._arrived = asyncio.Event()
        self._answered = asyncio.Event()
        self._closed = False
        self._failed: BaseException | None = None
        self._inbox_sub: NatsSub | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_problem = 0.0
        self.is_route = stream == adapter._routes.stream
        # Since when a pull request is out with no answer of any kind after it.
        self._waiting_since: float | None = None
        self._silence = max(2.0, 2 * (adapter.settings.fetch_timeout + _GRACE))
        self._looked_at = time.monotonic()
        self._looking: asyncio.Task[None] | None = None
        # Messages at their last delivery, being carried over (see eventbus_nats.group_route).
        self._max_deliver = adapter.settings.max_deliver
        self._carrying: deque[list[Any]] = deque()  # [msg, last kept alive]
        self._carrier: asyncio.Task[None] | None = None

    async def start(self) -> None:
        nc = self.adapter.client
        inbox = nc.new_inbox()
        self._inbox = inbox
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}"
        self._inbox_sub = await nc.subscribe(inbox, cb=self._on_msg)
        self._tasks = [asyncio.create_task(self._pull()), asyncio.create_task(self._keep_alive())]

    # -- arrivals --------------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        self._answered.set()
        self._waiting_since = None
        headers = msg.headers
        status = headers.get(_STATUS) if headers and not msg.data else None
        if headers and status is not None:
            if status == _HEARTBEAT:
                return
            # 408 (request expired), 409 (max waiting, leadership change, deleted
            # consumer), 404: that request is over.
            if self._requests:
                self._requests.popleft()
            if status not in ("404", "408"):
                self._problem(f"status {status} {headers.get('Description', '')}".strip())
            self._changed.set()
            return
        if self._requests:
            head = self._requests[0]
            head[1] -= 1
            if head[1] <= 0:
                self._requests.popleft()
        if self._max_deliver > 0 and ack_facts(msg)[0] >= self._max_deliver:
            # Never given back, even closing: the server would not deliver it again.
            self._carrying.append([msg, time.monotonic()])
            if not self._closed and (self._carrier is None or self._carrier.done()):
                self._carrier = asyncio.create_task(carry_over(self))
            return
        if self._closed:
            await self._give_back(msg)
            return
        self._ready.append([msg, time.monotonic()])
        self._arrived.set()
        self._changed.set()

    def _problem(self, what: str) -> None:
        now = time.monotonic()
        if now - self._last_problem > 5.0:
            self._last_problem = now
            log.info(
                "pull consumer %s/%s of topic %r: %s", self.stream, self.consumer, self.topic, what
            )
            self.adapter.keeper.check_soon(self, what)

    def _look_if_due(self) -> None:
        """Have the keeper look at the consumer when pulls go unanswered, or regularly."""
        if self._looking is not None and not self._looking.done():
            return
        now = time.monotonic()
        waiting = self._waiting_since
        if waiting is not None and now - waiting > self._silence:
            why = f"no answer to its pull requests for {now - waiting:.1f}s"
        elif now - self._looked_at > _LOOK_EVERY:
            why = "a regular look"
        else:
            return
        if not self.adapter.client.is_connected:
            return
        self._looked_at = now
        self._looking = asyncio.create_task(self._look(why))

    async def _look(self, why: str) -> None:
        if await self.adapter.keeper.check(self, why):
            # Requests sent to the consumer that was gone are never answered.
            self._requests.clear()
            self._waiting_since = None
            self._changed.set()

    async def backlog(self) -> int:
        """Messages of the stream the group has not been sent yet (``num_pending`` of
        the consumer's info); see :meth:`ConsumerKeeper.info` for what it raises."""
        info = await self.adapter.keeper.info(self)
        return info.num_pending or 0

    # -- asking for messages ----------------------------------------------------------

    def _credit(self) -> int:
        now = time.monotonic()
        while self._requests and self._requests[0][0] + _GRACE < now:
            self._requests.popleft()
        return sum(int(r[1]) for r in self._requests)

    async def _pull(self) -> None:
        nc = self.adapter.client
        expires = self.adapter.settings.fetch_timeout
        low_water = max(1, self.prefetch // 4)
        while not self._closed:
            self._changed.clear()
            self._look_if_due()
            credit = self._credit()
            room = self.prefetch - len(self._held) - len(self._ready) - credit
            if (room >= low_water or (room > 0 and credit == 0)) and nc.is_connected:
                request = {"batch": room, "expires": int(expires * 1e9)}
                try:
                    await nc.publish(
                        self._next_subject, json.dumps(request).encode(), reply=self._inbox
                    )
                    now = time.monotonic()
                    self._requests.append([now + expires, room])
                    if self._waiting_since is None:
                        self._waiting_since = now
                    continue
                except Exception as exc:  # reconnecting: ask again shortly
                    log.debug("pull request for %s failed: %s", self.topic, exc)
            wait = expires
            if self._requests:
                wait = max(0.01, self._requests[0][0] + _GRACE - time.monotonic())
            if not nc.is_connected:
                wait = min(wait, 0.2)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):  # no task per wait (wait_for makes one)
                    await self._changed.wait()

    async def _keep_alive(self) -> None:
        every = self.adapter.settings.ack_wait / 3
        while not self._closed:
            await asyncio.sleep(every)
            now = time.monotonic()
            waiting = [entry for entry in self._ready if entry[1] <= now - every]
            msgs = [entry[0] for entry in waiting]
            msgs += [d._msg for d in self._held if d.handed_at <= now - every]
            msgs += [entry[0] for entry in self._carrying]
            try:
                for msg in msgs:
                    await msg.in_progress()
            except Exception as exc:  # reconnecting: the next round tries again
                log.debug("in_progress for %s failed: %s", self.topic, exc)
                continue
            for entry in waiting:
                entry[1] = now

    # -- handing out ----------------------------------------------------------------

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while True:
            if self._closed:
                return
            if self._failed is not None:
                raise ConnectionLostError(
                    f"subscription to {self.topic!r} as group {self.options.group!r} on NATS "
                    f"at {self.adapter.settings.masked_url} failed: {self._failed}"
                ) from self._failed
            if self._ready and len(self._held) < self.prefetch:
                msg, kept = self._ready.popleft()
                if time.monotonic() - kept > self.adapter.settings.ack_wait:
                    # Not kept alive for a whole ack_wait (the connection was down):
                    # its lease is gone and the server has handed it out again.
                    log.debug("dropping a message of %s whose ack_wait expired", self.topic)
                    self._unread(msg)
                    continue
                delivery = JetStreamDelivery(self, msg)
                self._held.add(delivery)
                self._changed.set()
                yield delivery
                continue
            if self.adapter.client.is_closed and not self._closed:
                self._failed = ConnectionError("the NATS connection was closed")
                continue
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):  # no task per wait (wait_for makes one)
                    await self._arrived.wait()

    @property
    def closed(self) -> bool:
        return self._closed

    def release(self, delivery: JetStreamDelivery) -> None:
        self._held.discard(delivery)
        self._arrived.set()
        self._changed.set()

    def counted(self, msg: Msg) -> tuple[int, str]:
        """The deliveries of ``msg`` so far that may have run (the server's count less
        those given back unread, at least 1) and its message_id (the stream sequence)."""
        delivered, sequence = ack_facts(msg)
        message_id = f"{self.stream}/{sequence}"
        return max(1, delivered - self.unread.of(message_id)), message_id

    def _unread(self, msg: Msg) -> None:
        """``msg`` was fetched and goes back without being handed out: it did not run."""
        self.unread.add(f"{self.stream}/{ack_facts(msg)[1]}")

    async def _give_back(self, msg: Msg) -> None:
        """Nak a message never handed out (buffered, or arriving after close)."""
        self._unread(msg)
        try:
            await msg.nak()
        except Exception as exc:  # the server redelivers after ack_wait anyway
            log.debug("giving back a message of %s failed: %s", self.topic, exc)

    async def _drain_inbox(self, sub: NatsSub) -> None:
        """Stop the inbox's subscription, passing what nats-py still queues for it
        through :meth:`_on_msg` first (closed: given back, or kept to be carried over
        at its last delivery): ``unsubscribe()`` would drop it, and a last delivery
        dropped is never delivered again. Bounded by ``CLOSE_GRACE``; what is still
        queued then is said in a warning."""
        client = self.adapter.client
        if client.is_connected:
            try:
                await asyncio.wait_for(sub.drain(), tasks.CLOSE_GRACE)  # type: ignore[no-untyped-call]
                return
            except TimeoutError:
                pass
            except Exception as exc:  # closed or draining meanwhile: unsubscribe instead
                log.debug("draining the inbox of %s failed: %s", self.topic, exc)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        if sub.pending_msgs:
            log.warning(
                "closing the subscription to %r: %d message(s) the client still held "
                "were not read (they come back after ack_wait; a last delivery of "
                "max_deliver does not)",
                self.topic,
                sub.pending_msgs,
            )

    async def close(self) -> None:
        """Stop asking, let open requests expire, nak everything held and unsettled but
        last deliveries (``max_deliver``): those get a last, bounded carry-over."""
        if self._closed:
            return
        self._closed = True
        self._arrived.set()
        self._changed.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.adapter.settings.fetch_timeout + _GRACE
        while self._credit() and loop.time() < deadline and self.adapter.client.is_connected:
            # Each arrival (message or expiry status) sets _answered.
            self._answered.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answered.wait(), 0.05)
        background = [*self._tasks, self._looking, self._carrier]
        await stop_tasks(background, what=f"closing the subscription to {self.topic!r}", log=log)
        if self._inbox_sub is not None:
            await self._drain_inbox(self._inbox_sub)
        while self._ready:
            await self._give_back(self._ready.popleft()[0])
        if self._carrying:
            await carry_left_over(self)
        for delivery in list(self._held):
            if delivery.settled is None:
                with contextlib.suppress(Exception):
                    await delivery.nack()
        self._held.clear()
        self.adapter.forget(self)
