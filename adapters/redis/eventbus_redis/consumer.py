"""A Streams subscription: one consumer of the group, two background tasks.

- The reader blocks in XREADGROUP for new entries (``>``), never asking for more
  than the prefetch room left.
- The claimer takes back entries whose ``nack(delay)`` is due (a sorted set per
  topic and group, score = due time in ms), reclaims with XAUTOCLAIM the entries
  of consumers idle longer than ``claim_idle`` (dead, or closed without
  settling), and keeps this consumer's own unsettled entries fresh (XCLAIM
  JUSTID resets their idle time without counting a delivery) so a slow handler
  is not reclaimed mid-run.
- The attempt of a redelivered entry is its delivery count from XPENDING, less the
  deliveries given back unread (fetched ahead, never handed out: see :mod:`.attempts`).
- Connection errors are retried by the client and then by the tasks, with the
  same consumer name, so the entries it holds stay its own across a reconnect.
- ``close()`` hands unsettled entries back at once (XCLAIM IDLE very large), so
  the group's next XAUTOCLAIM takes them without waiting ``claim_idle``.
- A nack whose ZADD fails lets the entry go: no longer kept fresh nor counted
  against the prefetch, it is reclaimed by XAUTOCLAIM after ``claim_idle``.
- A group (or stream) deleted underneath is created again where this consumer
  had read up to (see :meth:`StreamSubscription._recreate_group`).

(Over 400 lines on purpose: the reader, the claimer and settling share one
consumer's state, the unsettled, waiting and acking sets; split, each part would
reach into the others' fields.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from redis.exceptions import ResponseError

from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.adapters_util import map_exceptions
from eventbus.tasks import stop_tasks

from .attempts import Attempts
from .codec import decode_fields
from .connection import group_errors
from .provision import ensure_group, gone, group_info, stream_backlog

if TYPE_CHECKING:
    from .adapter import RedisStreamsAdapter

log = logging.getLogger("eventbus.redis")

GIVE_BACK_IDLE_MS = 10 * 365 * 86_400_000  # "idle for ten years": reclaimable at once
# Takes the due members of a delay set atomically, so two consumers never both take one.
TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""


def delay_key(topic: str, group: str) -> str:
    """The sorted set holding the nacked entries of ``topic``/``group`` until they are due."""
    return f"eventbus:delayed:{group}:{topic}"


class StreamDelivery(Delivery):
    """One stream entry handed to this consumer."""

    __slots__ = ("_entry_id", "_owner")
    stable_id = True  # message_id is the entry id: the same on every redelivery

    def __init__(
        self, owner: StreamSubscription, entry_id: bytes, fields: dict[bytes, bytes], attempt: int
    ) -> None:
        super().__init__(
            decode_fields(fields),
            topic=owner.topic,
            group=owner.group,
            attempt=attempt,
            message_id=f"{owner.topic}/{entry_id.decode()}",
        )
        self._owner = owner
        self._entry_id = entry_id

    def given_back_unread(self) -> None:
        """Held past the adapter when its subscription closed; the bus never had it."""
        self._owner.attempts.gave_back([self._entry_id])

    @property
    def stale(self) -> bool:
        """True once its subscription closed: the entry was handed back to the group,
        so the bus must not start it here (another consumer reclaims it)."""
        return self._owner.closed

    async def _ack(self) -> None:
        await self._owner.acknowledge(self._entry_id)

    async def _reject(self) -> None:
        # The bus's dead-letter step already published it to <topic>.<group>.dlq.
        await self._owner.acknowledge(self._entry_id)

    async def _nack(self, delay: float) -> None:
        await self._owner.redeliver_later(self._entry_id, delay)


class StreamSubscription(Subscription):
    """One consumer of ``options.group`` on the stream ``topic``, which is created if
    missing when ``provision`` (by default the adapter's ``provision`` setting)."""

    def __init__(
        self,
        adapter: RedisStreamsAdapter,
        topic: str,
        options: SubscribeOptions,
        *,
        provision: bool | None = None,
    ) -> None:
        self.adapter = adapter
        self.topic = topic
        self.group = options.group
        self.options = options
        self.prefetch = max(1, options.prefetch)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.delay_key = delay_key(topic, options.group)
        self.provision = adapter.settings.provision if provision is None else provision
        # The core already chose it (the subscription's, else the URL's, else latest).
        self.start_from = options.start_from
        # redis-py's stubs type replies too narrowly to be useful here.
        self._client: Any = adapter.client
        self._take_due = self._client.register_script(TAKE_DUE)
        self.attempts = Attempts(self._client, adapter.settings, topic, options.group)
        self._buffer: deque[StreamDelivery] = deque()
        self._unsettled: set[bytes] = set()  # handed out (or buffered), not settled
        self._waiting: dict[bytes, float] = {}  # nacked by us -> due (monotonic)
        self._handed_out = 0
        self._acking: set[bytes] = set()  # acked by the handler, XACK not yet confirmed
        self._ack_task: asyncio.Task[None] | None = None
        self._closed = False
        self._changed = asyncio.Event()
        self._claim_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._autoclaim_from = b"0-0"
        # Where to create the group again if it is deleted underneath: the group's
        # position when this consumer joined, then the last entry it read.
        self.resume_from: bytes = b"0-0" if self.start_from == "earliest" else b"$"
        self._reading_since: float | None = None  # a blocking read is out (monotonic)

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Create the group if new (from the first entry or the end), start the tasks."""
        with map_exceptions(group_errors, what=self._joining()):
            await ensure_group(
                self._client,
                self.topic,
                self.group,
                "0" if self.start_from == "earliest" else "$",
                create=self.provision,
            )
            info = await group_info(self._client, self.topic, self.group)
            if info is not None:
                self.resume_from = bytes(info["last-delivered-id"])
        self._tasks = [
            asyncio.create_task(self._read_loop()),
            asyncio.create_task(self._claim_loop()),
        ]

    async def _recreate_group(self) -> None:
        """The group (or the whole stream) was deleted underneath: create it again.

        From the last entry this consumer read (or the group's position when it
        joined), not from ``$``: what was published after that, while the group was
        gone, is delivered and nothing read before is handed out again. A new group
        would start from ``start_from``, and that is what this is for a consumer
        that never read anything (``0`` for earliest). If the stream itself was
        deleted and written again, its new entries have later ids and are read too.
        Entries the old group had delivered and not acknowledged are not pending in
        the new one: an ack or nack of them is a no-op.
        """
        log.warning(
            "group %s of stream %s is gone on Redis (deleted, or Redis lost it); "
            "creating it again from entry %s",
            self.group,
            self.topic,
            self.resume_from.decode(),
        )
        with map_exceptions(group_errors, what=self._joining()):
            await ensure_group(
                self._client, self.topic, self.group, self.resume_from, create=self.provision
            )
        self._autoclaim_from = b"0-0"

    def _joining(self) -> str:
        return (
            f"joining group {self.group!r} of stream {self.topic!r} on Redis at "
            f"{self.adapter.settings.masked_url}"
        )

    async def close(self) -> None:
        """Stop reading and hand every unsettled entry back to the group at once."""
        if self._closed:
            return
        self._closed = True
        self._changed.set()
        await stop_tasks(self._tasks, what=f"closing the subscription to {self.topic!r}", log=log)
        if self._ack_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._ack_task), 5.0)
            except Exception as exc:  # unconfirmed acks: those entries come back later
                log.info(
                    "%d acks of %s/%s not confirmed at close: %s",
                    len(self._acking),
                    self.topic,
                    self.group,
                    exc,
                )
                self._ack_task.cancel()
        # Fetched and never handed out: no handler started them (see .attempts).
        self.attempts.gave_back(delivery._entry_id for delivery in self._buffer)
        self._buffer.clear()
        # Entries waiting out a nack delay stay in the delay set: whoever takes them
        # when due claims them, so handing them back now would cut the delay short.
        ids = list(self._unsettled)
        if ids:
            try:
                await asyncio.wait_for(
                    self._client.xclaim(
                        self.topic,
                        self.group,
                        self.consumer,
                        0,
                        ids,
                        idle=GIVE_BACK_IDLE_MS,
                        justid=True,
                    ),
                    5.0,
                )
            except Exception as exc:  # they come back after claim_idle anyway
                log.info(
                    "could not hand %d entries of %s/%s back: %s",
                    len(ids),
                    self.topic,
                    self.group,
                    exc,
                )
        self.adapter.forget(self)

    # -- settling ----------------------------------------------------------------

    async def acknowledge(self, entry_id: bytes) -> None:
        """Settle at once; the XACKs of many deliveries go out together in the background.

        Until Redis confirmed the XACK the entry stays in this consumer's pending
        list (kept fresh), so a lost XACK means a redelivery, never a loss.
        """
        self._settled(entry_id)
        self._acking.add(entry_id)
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.create_task(self._send_acks())

    async def _send_acks(self) -> None:
        failures = 0
        while self._acking:
            await asyncio.sleep(0)  # let the acks of this loop turn join the batch
            ids = list(self._acking)
            try:
                await self._client.xack(self.topic, self.group, *ids)
            except Exception as exc:  # CancelledError is no Exception: close() stops it
                failures += 1
                await self._recover(exc, failures, "acknowledging entries of")
                continue
            failures = 0
            self._acking.difference_update(ids)

    async def redeliver_later(self, entry_id: bytes, delay: float) -> None:
        """Put ``entry_id`` in the delay set, due in ``delay`` seconds.

        If that fails (Redis unreachable past redis-py's retries) the entry is let
        go: no longer kept fresh, nor counted against the prefetch, so XAUTOCLAIM
        (any consumer's, this one's too) takes it after ``claim_idle`` instead of
        it being held here for ever. The failure is raised (the bus logs it).
        """
        due_ms = int((time.time() + delay) * 1000)
        try:
            await self.adapter.batcher.one(
                lambda pipe: pipe.zadd(self.delay_key, {entry_id: due_ms})
            )
        except BaseException:
            self._settled(entry_id)
            raise
        self._settled(entry_id)
        self._waiting[entry_id] = time.monotonic() + delay
        self._claim_now.set()

    def _settled(self, entry_id: bytes) -> None:
        if entry_id not in self._unsettled:
            return  # let go already (a failed nack), or handed back at close
        self._unsettled.discard(entry_id)
        self._handed_out -= 1
        self._changed.set()

    # -- iteration -----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def overdue(self) -> float | None:
        """Seconds the current blocking read has gone unanswered past
        ``read_timeout`` (the connection stopped answering), or ``None``."""
        since = self._reading_since
        if since is None:
            return None
        late = time.monotonic() - since - self.adapter.settings.read_timeout
        return late if late > 0 else None

    async def backlog(self) -> int | None:
        """Entries the group could be given now: see :func:`.provision.stream_backlog`."""
        return await stream_backlog(self)

    def _room(self) -> int:
        # The reader and the claimer each fetch up to this, so up to twice the
        # prefetch may be buffered; the iterator still hands out at most prefetch.
        return self.prefetch - len(self._unsettled)

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while not self._closed:
            if self._buffer and self._handed_out < self.prefetch:
                delivery = self._buffer.popleft()
                self._handed_out += 1
                yield delivery
                continue
            self._changed.clear()
            await self._changed.wait()

    def _accept(self, entries: list[Any], attempts: dict[bytes, int]) -> None:
        for entry_id, fields in entries:
            if fields is None or entry_id in self._unsettled:
                continue  # trimmed away, or already ours and out
            self._unsettled.add(entry_id)
            self._waiting.pop(entry_id, None)
            self._buffer.append(StreamDelivery(self, entry_id, fields, attempts.get(entry_id, 1)))
        self._changed.set()

    # -- background tasks -------------------------------------------------------------

    async def _wait_for_room(self) -> int:
        # Read once a quarter of the prefetch is free, not on every settle: a read
        # per freed slot would be a round trip for one or two entries (while at
        # least that quarter is still unsettled, the handlers have work meanwhile).
        low = max(1, self.prefetch // 4)
        while (room := self._room()) <= 0 or (room < low and len(self._unsettled) >= low):
            self._changed.clear()
            await self._changed.wait()
        return room

    async def _read_loop(self) -> None:
        block = int(self.adapter.settings.block * 1000)  # XREADGROUP BLOCK takes ms
        failures = 0
        while not self._closed:
            room = await self._wait_for_room()
            try:
                self._reading_since = time.monotonic()
                try:
                    reply = await self._client.xreadgroup(
                        self.group, self.consumer, {self.topic: ">"}, count=room, block=block
                    )
                finally:
                    self._reading_since = None
                failures = 0
                for _, entries in reply or ():
                    if entries:
                        self.resume_from = entries[-1][0]
                    self._accept(entries, {})
            except Exception as exc:  # CancelledError is no Exception: close() stops it
                failures += 1
                await self._recover(exc, failures, "reading")

    async def _recover(self, exc: Exception, failures: int, doing: str) -> None:
        """Log, recreate the group if Redis lost it, and back off before trying again."""
        if isinstance(exc, ResponseError) and gone(exc):
            # Deleted underneath, or Redis came back without it (no persistence).
            try:
                await self._recreate_group()
            except Exception as again:
                log.warning(
                    "creating group %s of stream %s again failed (%s: %s); retrying",
                    self.group,
                    self.topic,
                    type(again).__name__,
                    again,
                )
            else:
                return
        else:
            log.log(
                logging.WARNING if failures == 3 else logging.DEBUG,
                "%s stream %s as group %s failed (%s: %s); retrying",
                doing,
                self.topic,
                self.group,
                type(exc).__name__,
                exc,
            )
        await asyncio.sleep(min(2.0, 0.05 * 2 ** min(failures, 6)))

    async def _claim_loop(self) -> None:
        s = self.adapter.settings
        interval = s.claim_interval
        refresh_every = s.claim_idle / 3
        next_autoclaim = next_refresh = 0.0
        failures = 0
        while not self._closed:
            now = time.monotonic()
            try:
                if self._room() > 0 and (self._waiting_due(now) or now >= next_autoclaim):
                    await self._take_due_entries()
                if now >= next_autoclaim:
                    if self._room() > 0:
                        await self._autoclaim()
                    next_autoclaim = now + interval
                if now >= next_refresh:
                    await self._refresh()
                    next_refresh = now + refresh_every
                failures = 0
            except Exception as exc:  # CancelledError is no Exception: close() stops it
                failures += 1
                await self._recover(exc, failures, "claiming entries of")
                continue
            wake = min([next_autoclaim, next_refresh, *self._waiting.values()])
            self._claim_now.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._claim_now.wait(), max(0.0, wake - time.monotonic()) + 0.005
                )

    def _waiting_due(self, now: float) -> bool:
        return any(due <= now for due in self._waiting.values())

    async def _take_due_entries(self) -> None:
        now_ms = int(time.time() * 1000)
        due = await self._take_due(keys=[self.delay_key], args=[now_ms, self._room()])
        for entry_id in due:
            self._waiting.pop(entry_id, None)
        # Our own past-due entries that another consumer took are no longer ours to wait for.
        now = time.monotonic()
        for entry_id in [i for i, when in self._waiting.items() if when < now - 5.0]:
            del self._waiting[entry_id]
        if not due:
            return
        # Counts as a delivery (no JUSTID): the delivery count is the attempt.
        entries = await self._client.xclaim(self.topic, self.group, self.consumer, 0, due)
        entries = [e for e in entries if e[1] is not None]
        self._accept(entries, await self.attempts.of_claimed([e[0] for e in entries]))

    async def _autoclaim(self) -> None:
        idle = int(self.adapter.settings.claim_idle * 1000)  # XAUTOCLAIM takes ms
        reply = await self._client.xautoclaim(
            self.topic, self.group, self.consumer, idle, self._autoclaim_from, count=self._room()
        )
        self._autoclaim_from = reply[0]
        entries = [e for e in reply[1] if e[1] is not None and e[0] not in self._unsettled]
        if entries:
            self._accept(entries, await self.attempts.of_claimed([e[0] for e in entries]))

    async def _refresh(self) -> None:
        """Reset the idle time of what we hold, so nobody reclaims it while we work."""
        ids = list(self._unsettled | self._acking | set(self._waiting))
        if ids:
            await self._client.xclaim(self.topic, self.group, self.consumer, 0, ids, justid=True)
