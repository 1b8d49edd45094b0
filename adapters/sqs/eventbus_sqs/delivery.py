"""One received SQS message as a :class:`~eventbus.adapter.Delivery`, and how receive
errors are told apart (an outage to ride out, a queue gone, a refusal that stays)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from eventbus.adapter import Delivery

from .codec import RECEIVES_ATTRIBUTE, decode, foreign_headers

if TYPE_CHECKING:
    from .consumer import SqsSubscription

Failure = Literal["transient", "gone", "permanent"]

# A queue that no longer exists (deleted underneath, or never made with provision=false).
GONE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist",
                        "NonExistentQueue"})
# Answers that say "not now" rather than "no": throttling, the service's own trouble,
# and AWS's 60 s wait before a deleted queue's name may be used again.
TRANSIENT_CODES = frozenset({
    "Throttling", "ThrottlingException", "RequestThrottled", "ServiceUnavailable",
    "InternalError", "InternalFailure", "RequestTimeout", "KMS.ThrottlingException",
    "KmsThrottled", "AWS.SimpleQueueService.QueueDeletedRecently", "QueueDeletedRecently",
})


def error_code(exc: BaseException) -> str:
    """The AWS error code of a client error, ``""`` for anything else."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def classify(exc: BaseException) -> Failure:
    """What an error of an SQS call means for whoever keeps calling.

    ``transient``: no answer, a dropped connection, throttling, a 5xx: call again.
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
    if isinstance(exc, BotoCoreError | OSError | TimeoutError):
        return "transient"
    return "permanent"


class Unrun:
    """Receives of a message this adapter gave back without handing it to anyone
    (closing with it still buffered, or its visibility lapsed before its turn), by
    MessageId: ``ApproximateReceiveCount`` counts them, yet its handler never ran, and
    the bus's crash-loop budget takes every receive it did not see for a run."""

    LIMIT = 10_000

    def __init__(self) -> None:
        self._counts: OrderedDict[str, int] = OrderedDict()

    def add(self, message_id: str) -> None:
        self._counts[message_id] = self._counts.pop(message_id, 0) + 1
        while len(self._counts) > self.LIMIT:
            self._counts.popitem(last=False)

    def of(self, message_id: str) -> int:
        return self._counts.get(message_id, 0)


def _count(text: object, default: int) -> int:
    try:
        return max(default, int(str(text)))
    except ValueError:
        return default


class SqsDelivery(Delivery):
    """A received message. ``attempt`` is SQS's ``ApproximateReceiveCount`` (plus the
    receives of earlier copies, when the message was sent anew on its last receive
    before the redrive policy would move it: see ``SqsSubscription.release``), less
    the receives this adapter gave back without handing the message out (:class:`Unrun`)."""

    __slots__ = ("_owner", "_receipt", "message", "receives")

    def __init__(self, owner: SqsSubscription, message: dict[str, Any]) -> None:
        envelope, raw, error = decode(message)
        system = message.get("Attributes", {}) or {}
        attributes: Mapping[str, Any] = message.get("MessageAttributes", {}) or {}
        self.receives = _count(system.get("ApproximateReceiveCount", "1"), 1)
        earlier = _count(attributes.get(RECEIVES_ATTRIBUTE, {}).get("StringValue", "0"), 0)
        message_id = str(message.get("MessageId", ""))
        super().__init__(
            topic=owner.topic,
            group=owner.options.group,
            envelope=envelope,
            attempt=max(1, earlier + self.receives - owner.adapter.unrun.of(message_id)),
            message_id=message_id,
            raw=raw if envelope is None else None,
            decode_error=error,
            raw_headers=foreign_headers(attributes) if envelope is None else None,
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
