"""A subscription: receivers long-polling one SQS queue, and what it does with their messages.

- ``receivers`` tasks long-poll the queue (``wait_seconds``), up to 10 messages
  per request and never more than ``prefetch`` received and unsettled at once.
  Every receive asks for the URL's ``visibility_timeout``: a queue made earlier
  with another one (or by an operator) does not decide how long a message is hidden.
- A heartbeat extends the visibility of every received message whose handler has
  not settled it, before it lapses, so a slow handler's message is not redelivered
  mid-run. A message being settled is never extended (its delete may land first).
- ``ack`` and ``reject`` delete (batched, 10 per request); ``nack(delay)`` sets
  the message's visibility to ``delay`` (SQS's own timer, capped at 12 hours);
  if that call fails the message still comes back when its visibility lapses.
- ``attempt`` is SQS's ``ApproximateReceiveCount``: every receive counts, the ones
  that ended with a crash included. With a redrive policy (``max_receive_count``),
  the last receive before SQS would move the message is never nacked back: it is
  sent anew, carrying its receive count (see :meth:`SqsSubscription.release`).
- A message whose visibility lapsed before it ran (SQS unreachable: the heartbeat
  failed) is dropped, not run, and frees its prefetch slot: SQS redelivers it.
- A queue deleted underneath ends the iteration with ``ConnectionLostError`` (the
  bus subscribes again, which provisions it anew); a refusal that stays (access
  denied, a KMS key disabled) ends it with an ``EventBusError``; an outage is
  ridden out inside, retrying with backoff.
- Closing stops the receivers and makes every unsettled message visible again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.adapters_util import Mapped, map_exceptions
from eventbus.errors import (
    BrokerConnectionError,
    ConnectionLostError,
    EventBusError,
    TopicNotFoundError,
)
from eventbus.given_back import given_back

from .delivery import SettleError, SqsDelivery, classify, send_anew, settle_batcher
from .settings import MAX_VISIBILITY_SECONDS

if TYPE_CHECKING:
    from .adapter import SqsAdapter

log = logging.getLogger("eventbus.sqs")

SYSTEM_ATTRIBUTES = ["ApproximateReceiveCount", "MessageGroupId"]


class SqsSubscription(Subscription):
    """Consumes one queue; see the module docstring for the guarantees."""

    def __init__(
        self, adapter: SqsAdapter, topic: str, queue_url: str, options: SubscribeOptions
    ) -> None:
        self.adapter = adapter
        self.topic = topic
        self.queue_url = queue_url
        self.options = options
        # Receives given back unread, for Delivery.attempt; shared by every
        # subscription of this queue in the process (a bus started anew keeps it).
        self.unread = given_back(f"sqs {queue_url}")
        self.settings = adapter.settings
        self._ready: deque[dict[str, Any]] = deque()
        self._held = 0  # prefetch slots taken: received (or being received), not let go
        # receipt handle -> when its visibility lapses as far as this consumer extended
        # it (monotonic); one entry per slot taken by a received message.
        self._unsettled: dict[str, float] = {}
        # receipt handle -> when it was last extended: the messages the heartbeat keeps
        # hidden (received and not being settled).
        self._beating: dict[str, float] = {}
        self._failure: Exception | None = None
        self._room = asyncio.Event()
        self._wake = asyncio.Event()
        self._closed = False
        self._beat_failing = False
        self._tasks: list[asyncio.Task[None]] = []
        sqs = adapter.sqs_client()
        self.where = f"SQS queue {queue_url} (topic {topic!r}, group {options.group!r})"
        self._deletes = settle_batcher(
            lambda entries: sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries),
            f"deleting a message on {self.where}",
        )
        self._visibility = settle_batcher(
            lambda entries: sqs.change_message_visibility_batch(
                QueueUrl=queue_url, Entries=entries
            ),
            f"changing a message's visibility on {self.where}",
        )

    def start(self) -> None:
        for index in range(self.settings.receivers):
            self._tasks.append(asyncio.create_task(self._receive(), name=f"sqs-receiver-{index}"))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="sqs-heartbeat"))

    # -- receiving --------------------------------------------------------------------

    async def _receive(self) -> None:
        sqs = self.adapter.sqs_client()
        prefetch = max(1, self.options.prefetch)
        timeout = self.settings.visibility_timeout
        failures = 0
        while not self._closed:
            want = min(10, prefetch - self._held)
            if want <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            self._held += want
            sent = time.monotonic()  # SQS hides what it hands out from no earlier than this
            try:
                reply = await sqs.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=want,
                    WaitTimeSeconds=self.settings.wait_seconds,
                    VisibilityTimeout=timeout,
                    MessageSystemAttributeNames=SYSTEM_ATTRIBUTES,
                    MessageAttributeNames=["All"],
                )
            except asyncio.CancelledError:
                self._held -= want
                raise
            except Exception as exc:
                self._held -= want
                kind = classify(exc)
                if kind != "transient":
                    self._fail(kind, exc)
                    return
                failures += 1
                delay = min(5.0, 0.1 * 2 ** min(failures, 6))
                log.warning(
                    "receiving from %s failed (%s: %s); retrying in %.1fs",
                    self.where,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            failures = 0
            messages = reply.get("Messages", []) or []
            self._held -= want - len(messages)
            for message in messages:
                receipt = str(message["ReceiptHandle"])
                self._unsettled[receipt] = sent + timeout
                # Due for its first extension a third of the timeout after the request
                # went out (not after the reply came: a slow reply ate into the lease).
                self._beating[receipt] = sent
                self._ready.append(message)
            if messages:
                self._wake.set()

    def _fail(self, kind: str, exc: Exception) -> None:
        """End the iteration with why: the bus subscribes again or gives up."""
        error: Exception
        if kind == "gone":
            # Provisioning must run again: the cached queue URL names nothing now.
            self.adapter.forget_group(self.topic, self.options.group)
            error = ConnectionLostError(
                f"{self.where} no longer exists (deleted underneath?); subscribing again "
                "creates it anew (provision=true) or fails saying it is missing"
            )
        else:
            error = EventBusError(
                f"receiving from {self.where} was refused: {type(exc).__name__}: {exc}; this "
                "is not an outage: check the queue's permissions (sqs:ReceiveMessage), its "
                "KMS key and the credentials"
            )
        error.__cause__ = exc
        if self._failure is None:
            self._failure = error
        self._wake.set()

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        while True:
            if self._failure is not None:
                raise self._failure
            if self._closed:
                return
            if self._ready:
                message = self._ready.popleft()
                if self.drop_if_lapsed(str(message["ReceiptHandle"])):
                    log.info(
                        "dropping a message of topic %r group %r whose visibility "
                        "lapsed before it was handed out",
                        self.topic,
                        self.options.group,
                    )
                    self.unread.add(str(message.get("MessageId", "")))
                    continue
                yield SqsDelivery(self, message)
                continue
            self._wake.clear()
            await self._wake.wait()

    async def backlog(self) -> int | None:
        """Messages visible in the group's queue (``ApproximateNumberOfMessages``): neither
        in flight nor delayed. On FIFO, visible messages may wait behind an in-flight one
        of their message group, so they count only when nothing is in flight."""
        with map_exceptions(_backlog_failure, what=f"counting the messages of {self.where}"):
            reply = await asyncio.wait_for(
                self.adapter.probe_client().get_queue_attributes(
                    QueueUrl=self.queue_url,
                    AttributeNames=[
                        "ApproximateNumberOfMessages",
                        "ApproximateNumberOfMessagesNotVisible",
                    ],
                ),
                self.settings.connect_timeout,
            )
        attributes = reply.get("Attributes", {})
        visible = int(attributes.get("ApproximateNumberOfMessages", 0))
        if self.settings.fifo and int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)):
            return 0
        return visible

    # -- settling ---------------------------------------------------------------------

    def lease_lapsed(self, receipt: str) -> bool:
        """Whether ``receipt``'s visibility has lapsed as far as this consumer knows."""
        return self._unsettled.get(receipt, math.inf) <= time.monotonic()

    def drop_if_lapsed(self, receipt: str) -> bool:
        """True (and the message let go, its slot freed) when its visibility lapsed."""
        if not self.lease_lapsed(receipt):
            return False
        self._let_go(receipt)
        return True

    def _let_go(self, receipt: str) -> None:
        """The message is no longer this consumer's: no heartbeat, its slot free."""
        self._beating.pop(receipt, None)
        if self._unsettled.pop(receipt, None) is not None:
            self._held -= 1
            self._room.set()

    async def delete(self, receipt: str) -> None:
        # Settling from here on: the heartbeat must not extend it, or its change could
        # land after the delete and be refused (ReceiptHandleIsInvalid).
        self._beating.pop(receipt, None)
        try:
            await self._deletes.one({"ReceiptHandle": receipt})
        finally:
            # Deleted, or not: then the bus nacks it, or its visibility lapses and SQS
            # redelivers it. Either way this consumer no longer holds it.
            self._let_go(receipt)

    async def release(self, delivery: SqsDelivery, delay: float) -> None:
        """Make the message visible again after ``delay`` seconds (SQS's own timer).

        On the last receive a redrive policy allows (``max_receive_count``), the message
        would be moved to the redrive queue on its next receive, whatever the reason it
        came back (an idempotency store down is no reason to give up on it): it is sent
        anew to this queue instead, carrying its receive count, and this copy deleted.
        """
        receipt = delivery.receipt
        seconds = math.ceil(delay)  # SQS counts whole seconds; never come back early
        if seconds > MAX_VISIBILITY_SECONDS:
            log.warning(
                "nack delay %.0fs on topic %r group %r is over SQS's 12-hour maximum; "
                "the message comes back after 12 hours",
                delay,
                self.topic,
                self.options.group,
            )
            seconds = MAX_VISIBILITY_SECONDS
        self._let_go(receipt)  # no more heartbeats: SQS owns the message again
        limit = self.settings.max_receive_count
        if limit and delivery.receives >= limit and await send_anew(self, delivery, seconds):
            return
        try:
            await self._visibility.one({"ReceiptHandle": receipt, "VisibilityTimeout": seconds})
        except Exception as exc:
            # Never leave it without an owner: it comes back when its visibility lapses.
            log.warning(
                "could not hand a message of topic %r group %r back to SQS (%s); it is "
                "redelivered when its visibility timeout (%ss) lapses",
                self.topic,
                self.options.group,
                exc,
                self.settings.visibility_timeout,
            )

    async def delete_now(self, receipt: str) -> None:
        """Delete a message this consumer already let go of (redrive: sent anew)."""
        await self._deletes.one({"ReceiptHandle": receipt})

    async def _heartbeat(self) -> None:
        timeout = self.settings.visibility_timeout
        every = max(1.0, timeout / 3)
        while not self._closed:
            await asyncio.sleep(min(every, 1.0))
            now = time.monotonic()
            # A lapsed lease is never renewed: SQS may have handed the message to
            # another consumer meanwhile (moto even accepts the late extension).
            due = [
                r
                for r, at in self._beating.items()
                if now - at >= every and not self.lease_lapsed(r)
            ]
            if not due:
                continue
            for receipt in due:
                self._beating[receipt] = now
            results = await asyncio.gather(
                *(
                    self._visibility.one({"ReceiptHandle": r, "VisibilityTimeout": timeout})
                    for r in due
                ),
                return_exceptions=True,
            )
            self._beaten(due, results, now + timeout)

    def _beaten(self, due: list[str], results: list[Any], until: float) -> None:
        """Record a heartbeat's outcome: leases extended, lost, or not reached."""
        lost, failed = 0, []
        for receipt, result in zip(due, results, strict=True):
            if receipt not in self._beating:
                continue  # settled meanwhile: its delete may have landed first
            if not isinstance(result, BaseException):
                self._unsettled[receipt] = until
            elif isinstance(result, SettleError) and result.receipt_lost:
                # SQS no longer knows this receipt: its visibility lapsed before the
                # extension reached it. Nothing to keep alive; not run if not yet begun.
                self._beating.pop(receipt, None)
                self._unsettled[receipt] = 0.0
                lost += 1
            else:
                failed.append(result)
        if lost:
            log.warning(
                "%d message(s) of topic %r group %r lapsed before their visibility "
                "was extended; SQS redelivers them (to whichever consumer asks)",
                lost,
                self.topic,
                self.options.group,
            )
        if failed and not self._beat_failing:
            log.warning(
                "extending the visibility of %d message(s) of topic %r group %r "
                "failed (%s); retrying each second until it lapses",
                len(failed),
                self.topic,
                self.options.group,
                failed[0],
            )
        elif not failed and self._beat_failing:
            log.info("extending visibilities on %s works again", self.where)
        self._beat_failing = bool(failed)

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
        for message in self._ready:  # received, never handed out: they did not run
            self.unread.add(str(message.get("MessageId", "")))
        self._ready.clear()
        receipts = [r for r in self._unsettled if r in self._beating]
        self._unsettled.clear()
        self._beating.clear()
        if receipts:
            # Unsettled messages go back now rather than when their visibility lapses;
            # within connect_timeout, so a close on a silent path still ends in time.
            try:
                results = await asyncio.wait_for(
                    asyncio.gather(
                        *(
                            self._visibility.one({"ReceiptHandle": r, "VisibilityTimeout": 0})
                            for r in receipts
                        ),
                        return_exceptions=True,
                    ),
                    self.settings.connect_timeout,
                )
            except TimeoutError as exc:
                results = [exc]
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                log.info(
                    "%d unsettled message(s) of topic %r group %r come back when their "
                    "visibility lapses (%s)",
                    len(failed),
                    self.topic,
                    self.options.group,
                    failed[0],
                )
        self.adapter.forget(self)

    @property
    def closed(self) -> bool:
        return self._closed


def _backlog_failure(exc: Exception) -> Mapped | None:
    """The queue is gone, or did not answer; anything else (a refusal) as it is."""
    kind = classify(exc)
    if kind == "gone":
        return TopicNotFoundError, "subscribing again provisions it anew"
    if kind == "transient" or isinstance(exc, TimeoutError):
        return BrokerConnectionError
    return None
