"""A message at its last delivery (``max_deliver``) carried over to a fresh copy.

The server stops delivering a message once it was delivered ``max_deliver``
times, whether or not its handler ever ran: an idempotency-store outage, or a
consumer crashing, would use the deliveries up and the message would vanish,
never handled and never dead-lettered. So a member that receives a message's
last delivery does not hand it out: it publishes a copy (same headers and
body) to the group's route (:mod:`eventbus_nats.group_route`, which only this
group reads), with ``Eventbus-Delivered`` saying how many deliveries came
before, then acknowledges the original. ``Delivery.attempt`` is that count plus
the server's, so the bus's retry budget (and its crash-loop guard) keeps
counting across copies, and the bus, not the server, decides when to give up.
A copy that cannot be published yet (the server unreachable) is kept alive
and tried again; it is lost only if the member closes first, which is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from nats.aio.msg import Msg

from .codec import MSG_ID, raw_block
from .wire import ack_command, ack_facts

if TYPE_CHECKING:
    from .consumer import JetStreamSubscription

log = logging.getLogger("eventbus.nats")

DELIVERED = "Eventbus-Delivered"
"""Header of a carried-over copy: deliveries of the message before this copy."""


def delivered_before(headers: Mapping[str, str] | None) -> int:
    """Deliveries before this copy (0 for a message never carried over)."""
    if not headers:
        return 0
    text = headers.get(DELIVERED)
    if text is None:
        return 0
    try:
        return max(0, int(text))
    except ValueError:
        return 0


def copy_block(msg: Msg, before: int, stream: str, sequence: str) -> tuple[bytes, bytes]:
    """The header block and body of ``msg``'s copy, saying ``before`` deliveries came
    first; its ``Nats-Msg-Id`` names the original, so a publish retried after a lost
    PubAck stores one copy."""
    # The server's own headers (Nats-Expected-Stream would refuse the copy) and the
    # old count are left out.
    headers = {name: value.encode("utf-8", "surrogateescape")
               for name, value in (msg.headers or {}).items()
               if not name.lower().startswith("nats-") and name != DELIVERED}
    headers[DELIVERED] = str(before).encode()
    headers[MSG_ID] = f"eventbus-carry.{stream}.{sequence}.{before}".encode()
    return raw_block(stream, headers), msg.data or b""


async def carry_over(sub: JetStreamSubscription) -> None:
    """Carry each message at its last delivery over to a fresh copy on the group's
    route, then acknowledge it; retried while the server does not confirm."""
    adapter = sub.adapter
    routes = adapter._routes
    while sub._carrying and not sub._closed:
        msg = sub._carrying[0][0]
        delivered, sequence = ack_facts(msg)
        before = delivered_before(msg.headers) + delivered - 1
        block, body = copy_block(msg, before, sub.stream, sequence)
        try:
            await routes.ensure_stream(await adapter._ready())
            (failure,) = await adapter.publisher.pubacks().publish(
                routes.subject(sub.topic, sub.options.group), [(block, body)],
                adapter.settings.publish_timeout)
            if failure is not None:
                raise failure
            await sub.client.write([ack_command(msg.reply)], 1, 4)
        except Exception as exc:
            log.warning("message %s/%s of %r group %r reached max_deliver=%d and could not "
                        "be carried over yet (%s: %s); kept, trying again", sub.stream,
                        sequence, sub.topic, sub.options.group, sub._max_deliver,
                        type(exc).__name__, exc)
            await asyncio.sleep(1.0)
            continue
        sub._carrying.popleft()
        log.info("message %s/%s of %r group %r reached max_deliver=%d: carried over to a "
                 "fresh copy on the group's route (%d deliveries so far)", sub.stream,
                 sequence, sub.topic, sub.options.group, sub._max_deliver, before)
