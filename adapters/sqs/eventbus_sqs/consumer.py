"""A subscription: receivers long-polling one SQS queue, and its deliveries.

- ``receivers`` tasks long-poll the queue (``wait_seconds``), up to 10 messages
  per request and never more than ``prefetch`` received and unsettled at once.
- A heartbeat extends the visibility of every received, unsettled message
  before it lapses, so a slow handler's message is not redelivered mid-run.
- ``ack`` and ``reject`` delete (batched, 10 per request); ``nack(delay)`` sets
  the message's visibility to ``delay`` (SQS's own timer, capped at 12 hours);
  if that call fails the message still comes back when its visibility lapses.
- ``attempt`` is SQS's ``ApproximateReceiveCount``.
- A received message whose visibility lapsed before it was handed out (the
  heartbeat could not reach SQS) is dropped, not run: SQS redelivers it.
- Closing stops the receivers and makes every unsettled message visible again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.errors import BrokerConnectionError

from .codec import BODY_ATTRIBUTE, decode
from .settings import MAX_VISIBILITY_SECONDS

if TYPE_CHECKING:
    from .adapter import SqsAdapter

log = logging.getLogger("eventbus.sqs")

BatchCall = Callable[[list[dict[str, Any]]], Awaitable[dict[str, Any]]]


class Batcher:
    """Gathers single calls made in the same loop turn into batch requests of 10.

    Each :meth:`add` returns when its own entry succeeded, or raises with the
    broker's error for that entry only.
    """

    def __init__(self, call: BatchCall, what: str) -> None:
        self._call = call
        self._what = what
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def add(self, entry: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((entry, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        await future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), 10):
            task = asyncio.ensure_future(self._send(pending[start:start + 10]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, chunk: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        entries = [{**entry, "Id": str(i)} for i, (entry, _) in enumerate(chunk)]
        try:
            reply = await self._call(entries)
        except Exception as exc:
            for _, future in chunk:
                if not future.done():
                    future.set_exception(BrokerConnectionError(
                        f"{self._what} failed: {type(exc).__name__}: {exc}"))
            return
        failed = {str(f.get("Id")): f for f in reply.get("Failed", []) or []}
        for i, (_, future) in enumerate(chunk):
            if future.done():
                continue
            failure = failed.get(str(i))
            if failure is None:
                future.set_result(None)
            else:
                future.set_exception(BrokerConnectionError(
                    f"{self._what} failed: {failure.get('Code')}: {failure.get('Message')}"))


class SqsDelivery(Delivery):
    __slots__ = ("_owner", "_receipt")

    def __init__(self, owner: SqsSubscription, message: dict[str, Any]) -> None:
        envelope, raw, error = decode(message)
        attributes = message.get("Attributes", {}) or {}
        try:
            attempt = max(1, int(attributes.get("ApproximateReceiveCount", "1")))
        except ValueError:
            attempt = 1
        super().__init__(
            topic=owner.topic,
            group=owner.options.group,
            envelope=envelope,
            attempt=attempt,
            message_id=str(message.get("MessageId", "")),
            raw=raw if envelope is None else None,
            decode_error=error,
        )
        self._owner = owner
        self._receipt = str(message["ReceiptHandle"])

    @property
    def stale(self) -> bool:
        """True once the message's visibility lapsed without the heartbeat renewing it
        (SQS unreachable): another consumer may have it, so it must not be run."""
        return self._owner.lease_lapsed(self._receipt)

    async def _ack(self) -> None:
        await self._owner.delete(self._receipt)

    async def _reject(self) -> None:
        # The bus's dead-letter middleware has already published the dead letter
        # (with its reason) to the DLQ topic; the broker's copy is done with.
        await self._owner.delete(self._receipt)

    async def _nack(self, delay: float) -> None:
        await self._owner.release(self._receipt, delay)


class SqsSubscription(Subscription):
    """Consumes one queue; see the module docstring for the guarantees."""

    def __init__(self, adapter: SqsAdapter, topic: str, queue_url: str,
                 options: SubscribeOptions) -> None:
        self.adapter = adapter
        self.topic = topic
        self.queue_url = queue_url
        self.options = options
        self.settings = adapter.settings
        self._ready: deque[dict[str, Any]] = deque()
        self._held = 0  # received (or being received) and not yet settled
        self._unsettled: dict[str, float] = {}  # receipt handle -> last extended (monotonic)
        # receipt handle -> when its visibility lapses as far as we know it was
        # extended (monotonic); a message not handed out by then may be someone else's.
        self._lease: dict[str, float] = {}
        self._room = asyncio.Event()
        self._wake = asyncio.Event()
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        sqs = adapter.sqs_client()
        where = f"on SQS queue {queue_url} (topic {topic!r}, group {options.group!r})"
        self._deletes = Batcher(
            lambda entries: sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries),
            f"deleting a message {where}")
        self._visibility = Batcher(
            lambda entries: sqs.change_message_visibility_batch(
                QueueUrl=queue_url, Entries=entries),
            f"changing a message's visibility {where}")

    def start(self) -> None:
        for index in range(self.settings.receivers):
            self._tasks.append(asyncio.create_task(self._receive(), name=f"sqs-receiver-{index}"))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="sqs-heartbeat"))

    # -- receiving --------------------------------------------------------------------

    async def _receive(self) -> None:
        sqs = self.adapter.sqs_client()
        prefetch = max(1, self.options.prefetch)
        failures = 0
        while not self._closed:
            want = min(10, prefetch - self._held)
            if want <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            if self._closed:
                break
            self._held += want
            try:
                reply = await sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=want,
                    WaitTimeSeconds=self.settings.wait_seconds,
                    MessageSystemAttributeNames=["ApproximateReceiveCount"],
                    MessageAttributeNames=[BODY_ATTRIBUTE],
                )
            except asyncio.CancelledError:
                self._held -= want
                raise
            except Exception as exc:
                self._held -= want
                failures += 1
                delay = min(5.0, 0.1 * 2 ** min(failures, 6))
                log.warning("receiving from SQS queue %s (topic %r, group %r) failed (%s: %s); "
                            "retrying in %.1fs", self.queue_url, self.topic, self.options.group,
                            type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            messages = reply.get("Messages", []) or []
            self._held -= want - len(messages)
            now = time.monotonic()
            for message in messages:
                receipt = str(message["ReceiptHandle"])
                self._unsettled[receipt] = now
                self._lease[receipt] = now + self.settings.visibility_timeout
                self._ready.append(message)
            if messages:
                self._wake.set()
            if self._closed:
                break

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while not self._closed:
            if self._ready:
                message = self._ready.popleft()
                receipt = str(message["ReceiptHandle"])
                if self.lease_lapsed(receipt):
                    # Its visibility lapsed while it waited (the heartbeat could not
                    # reach SQS): another consumer may have it now, so it is dropped
                    # here rather than run without a lease; SQS redelivers it.
                    log.info("dropping a message of topic %r group %r whose visibility "
                             "lapsed before it was handed out", self.topic, self.options.group)
                    self._settled(receipt)
                    continue
                yield SqsDelivery(self, message)
                continue
            self._wake.clear()
            await self._wake.wait()

    # -- settling ---------------------------------------------------------------------

    def lease_lapsed(self, receipt: str) -> bool:
        """Whether ``receipt``'s visibility has lapsed as far as this consumer knows."""
        return self._lease.get(receipt, math.inf) <= time.monotonic()

    def _settled(self, receipt: str) -> None:
        self._lease.pop(receipt, None)
        if self._unsettled.pop(receipt, None) is not None:
            self._held -= 1
            self._room.set()

    async def delete(self, receipt: str) -> None:
        await self._deletes.add({"ReceiptHandle": receipt})
        self._settled(receipt)

    async def release(self, receipt: str, delay: float) -> None:
        """Make the message visible again after ``delay`` seconds (SQS's own timer)."""
        seconds = math.ceil(delay)  # SQS counts whole seconds; never come back early
        if seconds > MAX_VISIBILITY_SECONDS:
            log.warning("nack delay %.0fs on topic %r group %r is over SQS's 12-hour maximum; "
                        "the message comes back after 12 hours", delay, self.topic,
                        self.options.group)
            seconds = MAX_VISIBILITY_SECONDS
        self._settled(receipt)  # no more heartbeats: SQS owns the message again
        try:
            await self._visibility.add({"ReceiptHandle": receipt, "VisibilityTimeout": seconds})
        except Exception as exc:
            # Never leave it without an owner: it comes back when its visibility lapses.
            log.warning("could not hand a message of topic %r group %r back to SQS (%s); it is "
                        "redelivered when its visibility timeout (%ss) lapses", self.topic,
                        self.options.group, exc, self.settings.visibility_timeout)

    async def _heartbeat(self) -> None:
        timeout = self.settings.visibility_timeout
        every = max(1.0, timeout / 3)
        while not self._closed:
            await asyncio.sleep(min(every, 1.0))
            now = time.monotonic()
            # A lapsed lease is never renewed: SQS may have handed the message to
            # another consumer meanwhile (moto even accepts the late extension).
            due = [r for r, at in self._unsettled.items()
                   if now - at >= every and not self.lease_lapsed(r)]
            if not due:
                continue
            for receipt in due:
                self._unsettled[receipt] = now
            results = await asyncio.gather(
                *(self._visibility.add({"ReceiptHandle": r, "VisibilityTimeout": timeout})
                  for r in due), return_exceptions=True)
            for receipt, result in zip(due, results, strict=True):
                if not isinstance(result, BaseException) and receipt in self._lease:
                    self._lease[receipt] = now + timeout
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                log.warning("extending the visibility of %d message(s) of topic %r group %r "
                            "failed (%s); they may be redelivered while still being handled",
                            len(failed), self.topic, self.options.group, failed[0])

    # -- closing ----------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._room.set()
        # A receive in flight is let finish rather than cancelled: the server would
        # still hand it messages, hidden for a visibility timeout with nobody to
        # release them. What it gets is released below.
        receivers = self._tasks[:-1]
        self._tasks[-1].cancel()
        if receivers:
            _, late = await asyncio.wait(receivers, timeout=self.settings.wait_seconds + 2.0)
            for task in late:
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._ready.clear()
        receipts = list(self._unsettled)
        self._unsettled.clear()
        self._lease.clear()
        if receipts:
            # Unsettled messages go back now rather than when their visibility lapses.
            results = await asyncio.gather(
                *(self._visibility.add({"ReceiptHandle": r, "VisibilityTimeout": 0})
                  for r in receipts), return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                log.info("%d unsettled message(s) of topic %r group %r come back when their "
                         "visibility lapses (%s)", len(failed), self.topic, self.options.group,
                         failed[0])
        self.adapter.forget(self)

    @property
    def closed(self) -> bool:
        return self._closed
