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

from collections.abc import Mapping

from nats.aio.msg import Msg

from .codec import MSG_ID, raw_block

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
