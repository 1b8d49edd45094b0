"""One received SQS message as a :class:`~eventbus.adapter.Delivery`; how receive and
settle errors are told apart (an outage to ride out, a queue gone, a refusal that
stays); settles gathered into batch requests; and the last receive before a redrive.

The last receive a redrive policy allows: the message is sent anew, never moved away.
With ``max_receive_count=N`` SQS moves a message to ``<queue>-redrive`` on the receive
after its N-th, whatever made it come back: a handler that failed, but also an
idempotency store that was down or a process that stopped, which say nothing about
the message. So a message nacked on its N-th receive is sent to its queue again as a
new message (same body and attributes, its receives so far in the
``eventbus-receives`` attribute, so ``Delivery.attempt`` keeps counting and the
retry budget still ends it), and the received copy is deleted (:func:`send_anew`).
Only a message whose consumers die before they can nack it N times in a row reaches
the redrive queue.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from botocore.parsers import ResponseParserError

from eventbus.adapter import Delivery
from eventbus.adapters_util import TurnBatcher
from eventbus.errors import BrokerConnectionError

from .codec import MAX_ATTRIBUTES, RECEIVES_ATTRIBUTE, decode

if TYPE_CHECKING:
    from .consumer import SqsSubscription

log = logging.getLogger("eventbus.sqs")

Failure = Literal["transient", "gone", "permanent"]

# A queue that no longer exists (deleted underneath, or never made with provision=false).
GONE_CODES = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue"}
)
# Answers that say "not now" rather than "no": throttling, the service's own trouble,
# and AWS's 60 s wait before a deleted queue's name may be used again.
TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "RequestTimeout",
        "KMS.ThrottlingException",
        "KmsThrottled",
        "AWS.SimpleQueueService.QueueDeletedRecently",
        "QueueDeletedRecently",
    }
)


# Per-entry answers saying the receipt handle no longer names a message this consumer
# holds: it was deleted, or its visibility lapsed and SQS may have handed it out again.
LOST_RECEIPT_CODES = frozenset(
    {
        "ReceiptHandleIsInvalid",
        "InvalidReceiptHandle",
        "MessageNotInflight",
        "AWS.SimpleQueueService.MessageNotInflight",
    }
)


class SettleError(BrokerConnectionError):
    """A delete or visibility change SQS did not confirm; ``code`` is SQS's error code
    for the entry (``""`` when the whole request failed: no answer, a dropped connection)."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code

    @property
    def receipt_lost(self) -> bool:
        """SQS no longer knows the receipt: nothing this consumer can do to it any more."""
        return self.code in LOST_RECEIPT_CODES


Entry = dict[str, Any]
BatchCall = Callable[[list[Entry]], Awaitable[dict[str, Any]]]


def settle_batcher(call: BatchCall, what: str) -> TurnBatcher[Entry, None]:
    """Single settles (deletes, visibility changes) of one loop turn gathered into
    batch requests of 10 (SQS's most); each caller's ``one(entry)`` returns once its own
    entry succeeded, or raises :class:`SettleError` with SQS's answer for that entry."""

    async def send(entries: list[Entry]) -> list[BaseException | None]:
        reply = await call([{**entry, "Id": str(i)} for i, entry in enumerate(entries)])
        failed = {str(f.get("Id")): f for f in reply.get("Failed", []) or []}
        outcomes: list[BaseException | None] = []
        for i in range(len(entries)):
            failure = failed.get(str(i))
            code = "" if failure is None else str(failure.get("Code", ""))
            outcomes.append(
                None
                if failure is None
                else SettleError(f"{what} failed: {code}: {failure.get('Message')}", code)
            )
        return outcomes

    return TurnBatcher(
        send,
        max_items=10,
        fail=lambda exc: SettleError(f"{what} failed: {type(exc).__name__}: {exc}"),
    )


def error_code(exc: BaseException) -> str:
    """The AWS error code of a client error, ``""`` for anything else."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def classify(exc: BaseException) -> Failure:
    """What an error of an SQS call means for whoever keeps calling.

    ``transient``: no answer, a dropped connection, throttling, a 5xx, a reply that
    could not be read (an HTML error page from the server or a proxy): call again.
    ``gone``: the queue does not exist (any more). ``permanent``: SQS answered no
    (access denied, a KMS key disabled, a bad parameter), and will answer no again.
    """
    code = error_code(exc)
    if code in GONE_CODES:
        return "gone"
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in TRANSIENT_CODES or "Throttl" in code or int(status or 0) >= 500:
            return "transient"
        return "permanent"
    if isinstance(exc, BotoCoreError | ResponseParserError | OSError | TimeoutError):
        return "transient"
    return "permanent"


def _count(text: object, default: int) -> int:
    try:
        return max(default, int(str(text)))
    except ValueError:
        return default


class SqsDelivery(Delivery):
    """A received message. ``attempt`` is SQS's ``ApproximateReceiveCount`` (plus the
    receives of earlier copies, when the message was sent anew on its last receive
    before the redrive policy would move it: see ``SqsSubscription.release``), less
    the receives given back unread by a subscription of this queue in this process
    (:mod:`eventbus.given_back`)."""

    __slots__ = ("_owner", "_receipt", "message", "receives")
    stable_id = True  # message_id is SQS's MessageId: the same on every redelivery

    def __init__(self, owner: SqsSubscription, message: dict[str, Any]) -> None:
        system = message.get("Attributes", {}) or {}
        attributes: Mapping[str, Any] = message.get("MessageAttributes", {}) or {}
        self.receives = _count(system.get("ApproximateReceiveCount", "1"), 1)
        earlier = _count(attributes.get(RECEIVES_ATTRIBUTE, {}).get("StringValue", "0"), 0)
        message_id = str(message.get("MessageId", ""))
        super().__init__(
            decode(message),
            topic=owner.topic,
            group=owner.options.group,
            attempt=max(1, earlier + self.receives - owner.unread.of(message_id)),
            message_id=message_id,
        )
        self.message = message
        self._owner = owner
        self._receipt = str(message["ReceiptHandle"])

    @property
    def receipt(self) -> str:
        return self._receipt

    @property
    def stale(self) -> bool:
        """True once the message's visibility lapsed without the heartbeat renewing it
        (SQS unreachable): another consumer may have it, so it must not be run. The
        bus drops a stale delivery unsettled, so its prefetch slot is freed here."""
        return self._owner.drop_if_lapsed(self._receipt)

    async def _ack(self) -> None:
        await self._owner.delete(self._receipt)

    async def _reject(self) -> None:
        # The bus's dead-letter middleware has already published the dead letter
        # (with its reason) to the DLQ topic, whose queue keeps it; the broker's copy
        # is done with.
        await self._owner.delete(self._receipt)

    async def _nack(self, delay: float) -> None:
        await self._owner.release(self, delay)


# -- the last receive before a redrive -------------------------------------------------

MAX_DELAY_SECONDS = 900  # SendMessage's DelaySeconds; FIFO queues take none per message
_VALUE_KEYS = ("DataType", "StringValue", "BinaryValue")


async def send_anew(subscription: SqsSubscription, delivery: SqsDelivery, delay: int) -> bool:
    """Send ``delivery``'s message to its queue again and delete this copy; whether it
    was sent (if not, the caller hands the copy back as for any nack)."""
    message = delivery.message
    attributes: dict[str, Any] = {
        name: {k: v for k, v in value.items() if k in _VALUE_KEYS}
        for name, value in (message.get("MessageAttributes") or {}).items()
        if name != RECEIVES_ATTRIBUTE
    }
    attributes[RECEIVES_ATTRIBUTE] = {"DataType": "Number", "StringValue": str(delivery.attempt)}
    where = f"topic {subscription.topic!r} group {subscription.options.group!r}"
    if len(attributes) > MAX_ATTRIBUTES:
        log.warning(
            "message %s of %s is on its last receive before the redrive policy "
            "moves it, but carries %d attributes, so its receive count cannot be "
            "added; it is handed back and SQS redrives it on its next receive",
            delivery.message_id,
            where,
            len(attributes) - 1,
        )
        return False
    entry: dict[str, Any] = {
        "QueueUrl": subscription.queue_url,
        "MessageBody": message["Body"],
        "MessageAttributes": attributes,
    }
    if subscription.settings.fifo:
        system = message.get("Attributes", {}) or {}
        entry["MessageGroupId"] = system.get("MessageGroupId") or delivery.message_id
        entry["MessageDeduplicationId"] = f"{delivery.message_id}.r{delivery.attempt}"[:128]
    else:
        entry["DelaySeconds"] = min(delay, MAX_DELAY_SECONDS)
    try:
        await subscription.adapter.sqs_client().send_message(**entry)
    except Exception as exc:
        log.warning(
            "message %s of %s is on its last receive before the redrive policy moves "
            "it; sending it anew failed (%s: %s), so it is handed back and SQS "
            "redrives it on its next receive",
            delivery.message_id,
            where,
            type(exc).__name__,
            exc,
        )
        return False
    try:
        await subscription.delete_now(delivery.receipt)
    except Exception as exc:
        log.warning(
            "message %s of %s was sent anew on its last receive, but deleting the "
            "old copy failed (%s); that copy goes to the redrive queue on its next "
            "receive (a duplicate of the new one)",
            delivery.message_id,
            where,
            exc,
        )
    log.info(
        "message %s of %s came back on its last receive before the redrive policy "
        "(max_receive_count=%d): sent anew, carrying its %d receive(s)",
        delivery.message_id,
        where,
        subscription.settings.max_receive_count,
        delivery.attempt,
    )
    return True
