"""Sending to SNS topics and SQS queues: batches of 10 (and 256 KiB), per-index failures.

Batches go out concurrently, except in FIFO where two batches sharing a message
group (a partition key) go one after the other: the second waits for the first's
reply, and if an entry of a key failed, the key's later entries are not sent at
all (sending them would put them before the one that must be sent again).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from eventbus.adapter import broker_dedupe_id
from eventbus.adapters_util import Mapped, translate
from eventbus.envelope import Envelope
from eventbus.errors import (
    BatchPublishError,
    BrokerConnectionError,
    EventBusError,
    MessageTooLargeError,
    PublishError,
)

from .delivery import GONE_CODES, TRANSIENT_CODES, error_code
from .settings import MAX_SQS_MESSAGE_BYTES

if TYPE_CHECKING:
    from .adapter import SqsAdapter

BATCH_COUNT = 10
Entry = dict[str, Any]
Batch = list[tuple[int, Entry]]
Send = Callable[[Batch], Awaitable[dict[int, Exception]]]
# MessageGroupId / MessageDeduplicationId: up to 128 of these characters.
_FIFO_ID = re.compile(r"^[A-Za-z0-9!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]{1,128}$")


def fifo_id(text: str) -> str:
    """``text`` as a FIFO group or dedupe id: itself when SQS allows it, else a hash
    (the same text always maps to the same id, two texts almost never to one)."""
    if _FIFO_ID.match(text):
        return text
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_dead_letter(envelope: Envelope) -> bool:
    return "dlqfailedat" in envelope.extensions


class Publisher:
    """Builds the entries of one adapter's sends and sends them."""

    def __init__(self, adapter: SqsAdapter) -> None:
        self.adapter = adapter
        self.fifo = adapter.settings.fifo

    def entry(
        self, body: str, attributes: dict[str, Any], envelope: Envelope | None, dedupe: str
    ) -> Entry:
        """One message to send. FIFO: ``dedupe`` is its MessageDeduplicationId; its
        MessageGroupId is the partition key (no key means no order asked for, so the
        dedupe id spreads such messages). Dead letters keep no order among themselves
        either: a FIFO queue hands out nothing more of a message group while one of it
        is in flight, so the DLQ tooling could not see past the first few of a key."""
        entry: Entry = {"body": body}
        if attributes:
            entry["MessageAttributes"] = attributes
        if self.fifo:
            key = None if envelope is None or is_dead_letter(envelope) else envelope.partitionkey
            entry["MessageGroupId"] = fifo_id(key or dedupe)
            entry["MessageDeduplicationId"] = fifo_id(dedupe)
        return entry

    def entries(self, envelopes: Sequence[Envelope], bodies: Sequence[str]) -> list[Entry]:
        # A dead letter is a new message: the id the broker dedupes on names the
        # failure too, so the same event failing again after a replay is kept.
        return [
            self.entry(body, {}, envelope, broker_dedupe_id(envelope))
            for envelope, body in zip(envelopes, bodies, strict=True)
        ]

    async def send(
        self, topic: str, entries: list[Entry], sizes: list[int], send: Send
    ) -> dict[int, Exception]:
        """Send ``entries`` in batches; the indexes that failed and why."""
        batches: list[list[int]] = [[]]
        total = 0
        for i, size in enumerate(sizes):
            batch = batches[-1]
            if len(batch) == BATCH_COUNT or (batch and total + size > MAX_SQS_MESSAGE_BYTES):
                batches.append([])
                batch, total = batches[-1], 0
            batch.append(i)
            total += size
        failures: dict[int, Exception] = {}
        # Per message group, the last batch holding it and the first error it got.
        last: dict[str, asyncio.Task[None]] = {}
        failed_keys: dict[str, Exception] = {}

        async def one(batch: list[int], after: set[asyncio.Task[None]]) -> None:
            if after:
                await asyncio.wait(after)
            todo: Batch = []
            for i in batch:
                key = entries[i].get("MessageGroupId")
                earlier = failed_keys.get(key) if key is not None else None
                if earlier is not None:
                    failures[i] = type(earlier)(
                        f"not sent: an earlier event of its message group was not confirmed "
                        f"({earlier}); sending it first would break the group's order"
                    )
                else:
                    todo.append((i, entries[i]))
            if not todo:
                return
            try:
                result = await send(todo)
            except Exception as exc:
                error = self.error(topic, exc)
                result = {i: error for i, _ in todo}
            failures.update(result)
            for i in result:
                key = entries[i].get("MessageGroupId")
                if key is not None:
                    failed_keys.setdefault(key, result[i])

        tasks = []
        for batch in batches:
            keys = {entries[i]["MessageGroupId"] for i in batch} if self.fifo else set()
            after = {last[k] for k in keys if k in last}
            task = asyncio.ensure_future(one(batch, after))
            for key in keys:
                last[key] = task
            tasks.append(task)
        await asyncio.gather(*tasks)
        return failures

    def failed(self, reply: dict[str, Any]) -> dict[int, Exception]:
        """The per-entry failures of a batch reply, by index."""
        failures: dict[int, Exception] = {}
        for failure in reply.get("Failed", []) or []:
            code, text = failure.get("Code", "?"), failure.get("Message", "")
            error: Exception
            if code in TRANSIENT_CODES:
                error = BrokerConnectionError(f"SQS/SNS did not take it now ({code}: {text})")
            elif "TooLong" in code or "too long" in str(text).lower():
                error = MessageTooLargeError(f"SQS/SNS refused it as too large ({code}: {text})")
            else:
                error = PublishError(f"SQS/SNS refused it ({code}: {text})")
            failures[int(failure["Id"])] = error
        return failures

    def error(self, topic: str, exc: BaseException) -> Exception:
        """A failed request as the error the bus acts on: an outage or a refusal."""
        if isinstance(exc, EventBusError) or not isinstance(exc, Exception):
            return (
                exc
                if isinstance(exc, Exception)
                else PublishError(f"publishing to {topic!r} was cut short ({type(exc).__name__})")
            )
        settings = self.adapter.settings
        return translate(
            exc,
            _publish_failure,
            what=(
                f"publishing to {topic!r} on SQS/SNS at {settings.endpoint_url or settings.region}"
            ),
        )

    def raise_failures(
        self, topic: str, envelopes: Sequence[Envelope | None], failures: dict[int, Exception]
    ) -> None:
        if not failures:
            return
        if len(failures) == len(envelopes) and all(
            isinstance(e, BrokerConnectionError) for e in failures.values()
        ):
            raise next(iter(failures.values()))
        if len(envelopes) == 1 and envelopes[0] is None:
            raise failures[0]
        errors: dict[int, Exception] = {}
        for i, error in failures.items():
            envelope = envelopes[i]
            what = f"event {envelope.id} ({envelope.type})" if envelope else f"message {i}"
            wrapped = type(error)(f"{what} to {topic!r}: {error}")
            wrapped.__cause__ = error.__cause__ or error
            errors[i] = wrapped
        raise BatchPublishError.partial(errors, len(envelopes), f"SQS/SNS topic {topic!r}")

    def via_queue(self, url: str) -> Send:
        """Batches sent straight to the queue at ``url`` (SendMessageBatch). A queue
        deleted underneath (the topic's queue in queue topology, a group's on a replay)
        is an outage: its cached URL is dropped, so the bus's publish retry provisions
        it again (or, with provision=false, reports it missing)."""
        sqs = self.adapter.sqs_client()
        provisioner = self.adapter.provisioner

        async def call(entries: list[dict[str, Any]]) -> dict[str, Any]:
            try:
                reply: dict[str, Any] = await sqs.send_message_batch(QueueUrl=url, Entries=entries)
            except ClientError as exc:
                if error_code(exc) not in GONE_CODES:
                    raise
                provisioner.forget_queue(url)
                raise BrokerConnectionError(
                    f"SQS queue {url} no longer exists (deleted underneath?); it is "
                    "looked up, or provisioned, again on the next try"
                ) from exc
            return reply

        return self._via(call, "MessageBody")

    def via_topic(self, arn: str) -> Send:
        """Batches published to the SNS topic ``arn`` (PublishBatch)."""
        sns = self.adapter.sns_client()
        return self._via(
            lambda entries: sns.publish_batch(TopicArn=arn, PublishBatchRequestEntries=entries),
            "Message",
        )

    def _via(
        self, call: Callable[[list[dict[str, Any]]], Awaitable[dict[str, Any]]], body: str
    ) -> Send:
        """A sender of batches through ``call``, the body under the request's ``body`` key."""

        async def send(batch: Batch) -> dict[int, Exception]:
            reply = await call(
                [
                    {"Id": str(i), body: e["body"], **{k: v for k, v in e.items() if k != "body"}}
                    for i, e in batch
                ]
            )
            return self.failed(reply)

        return send


def _publish_failure(exc: Exception) -> Mapped:
    """An outage (publish again) or a refusal (SQS/SNS answered no: it stays no)."""
    code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
    if code in TRANSIENT_CODES or isinstance(
        exc, EndpointConnectionError | BotoCoreError | OSError | TimeoutError
    ):
        return BrokerConnectionError
    return PublishError
