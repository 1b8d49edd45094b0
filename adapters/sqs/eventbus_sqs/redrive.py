"""The last receive a redrive policy allows: the message is sent anew, never moved away.

With ``max_receive_count=N`` SQS moves a message to ``<queue>-redrive`` on the receive
after its N-th, whatever made it come back: a handler that failed, but also an
idempotency store that was down or a process that stopped, which say nothing about
the message. So a message nacked on its N-th receive is sent to its queue again as a
new message (same body and attributes, its receives so far in the
``eventbus-receives`` attribute, so ``Delivery.attempt`` keeps counting and the
retry budget still ends it), and the received copy is deleted. Only a message whose
consumers die before they can nack it N times in a row reaches the redrive queue.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .codec import MAX_ATTRIBUTES, RECEIVES_ATTRIBUTE

if TYPE_CHECKING:
    from .consumer import SqsSubscription
    from .delivery import SqsDelivery

log = logging.getLogger("eventbus.sqs")

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
        log.warning("message %s of %s is on its last receive before the redrive policy "
                    "moves it, but carries %d attributes, so its receive count cannot be "
                    "added; it is handed back and SQS redrives it on its next receive",
                    delivery.message_id, where, len(attributes) - 1)
        return False
    entry: dict[str, Any] = {"QueueUrl": subscription.queue_url, "MessageBody": message["Body"],
                             "MessageAttributes": attributes}
    if subscription.settings.fifo:
        system = message.get("Attributes", {}) or {}
        entry["MessageGroupId"] = system.get("MessageGroupId") or delivery.message_id
        entry["MessageDeduplicationId"] = f"{delivery.message_id}.r{delivery.attempt}"[:128]
    else:
        entry["DelaySeconds"] = min(delay, MAX_DELAY_SECONDS)
    try:
        await subscription.adapter.sqs_client().send_message(**entry)
    except Exception as exc:
        log.warning("message %s of %s is on its last receive before the redrive policy moves "
                    "it; sending it anew failed (%s: %s), so it is handed back and SQS "
                    "redrives it on its next receive", delivery.message_id, where,
                    type(exc).__name__, exc)
        return False
    try:
        await subscription.delete_now(delivery.receipt)
    except Exception as exc:
        log.warning("message %s of %s was sent anew on its last receive, but deleting the "
                    "old copy failed (%s); that copy goes to the redrive queue on its next "
                    "receive (a duplicate of the new one)", delivery.message_id, where, exc)
    log.info("message %s of %s came back on its last receive before the redrive policy "
             "(max_receive_count=%d): sent anew, carrying its %d receive(s)",
             delivery.message_id, where, subscription.settings.max_receive_count,
             delivery.attempt)
    return True
