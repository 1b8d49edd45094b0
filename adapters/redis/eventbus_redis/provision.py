"""Streams consumer groups as Redis sees them: creating them, telling that one (or
its stream) is gone, and what a group could be given now.

Streams and groups are created on first use (``XGROUP CREATE ... MKSTREAM``); a
group that exists keeps its position. With ``provision=false`` a missing stream is
not created (``XGROUP CREATE`` without ``MKSTREAM``): the subscription fails with
:class:`~eventbus.errors.ProvisioningError` (see :func:`.connection.group_errors`);
its group is still created on an existing stream.

``backlog()`` (:func:`stream_backlog`, for the bus's stall watch) counts, for one
consumer group of one stream:

- **lag**: entries added to the stream after the group's last delivered entry
  (``XINFO GROUPS`` ``lag``, Redis 7+). Where Redis cannot tell (``lag`` is nil:
  entries after the group's position were deleted, or Redis 6) the entries after
  ``last-delivered-id`` are counted with ``XRANGE``, up to :data:`LIMIT`;
- **pending entries idle past ``claim_idle``**: delivered to a consumer that
  stopped keeping them fresh (dead, or let go of them after a failed nack), so
  any consumer's next ``XAUTOCLAIM`` takes them (``XPENDING ... IDLE``, up to
  :data:`LIMIT`), except those waiting out a nack delay;
- **delayed retries that are due**: ids in the group's delay set whose due time
  has passed (``ZCOUNT``); those still waiting are not counted.

Entries held by live consumers (in flight, kept fresh) are not counted. A stream
or group that no longer exists raises TopicNotFoundError; no answer raises
BrokerConnectionError.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from eventbus.adapters_util import Mapped, map_exceptions
from eventbus.errors import BrokerConnectionError, TopicNotFoundError

from .connection import CONNECTION_ERRORS

if TYPE_CHECKING:
    from .consumer import StreamSubscription


async def ensure_group(
    client: Any, topic: str, group: str, start: str | bytes, *, create: bool = True
) -> None:
    """Create ``group`` on the stream ``topic`` (and the stream if missing, unless not
    ``create``) from entry ``start`` (``0``, ``$`` or an entry id); a group that
    exists keeps its position. A missing stream not to be created raises Redis's
    ResponseError (``requires the key to exist``)."""
    try:
        await client.xgroup_create(topic, group, id=start, mkstream=create)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


async def group_info(client: Any, topic: str, group: str) -> dict[str, Any] | None:
    """``XINFO GROUPS`` of ``topic`` for ``group`` (``last-delivered-id``, ``lag`` ...),
    ``None`` if the stream has no such group; a missing stream raises ResponseError."""
    for info in await client.xinfo_groups(topic):
        name = info.get("name")
        if (name.decode("utf-8", "replace") if isinstance(name, bytes) else name) == group:
            return dict(info)
    return None


def gone(exc: ResponseError) -> bool:
    """Whether Redis says the group or its stream no longer exists (NOGROUP; a blocked
    read ended by the stream's deletion: UNBLOCKED)."""
    text = str(exc)
    return text.startswith(("NOGROUP", "UNBLOCKED")) or "NOGROUP" in text


def backlog_errors(exc: Exception) -> Mapped | None:
    """A backlog query's failure: the group or its stream gone is TopicNotFoundError
    (nothing is consumed until it is created again), anything else Redis out of reach."""
    if isinstance(exc, ResponseError) and (
        "no such key" in str(exc).lower() or "NOGROUP" in str(exc)
    ):
        return (TopicNotFoundError, "deleted? nothing is consumed until it is created again")
    if isinstance(exc, RedisError | CONNECTION_ERRORS):
        return BrokerConnectionError
    return None


LIMIT = 1000
"""At most this many undelivered or idle entries are counted one by one (a stall
needs one; a precise count of more is not worth a long scan)."""


async def stream_backlog(subscription: StreamSubscription) -> int:
    """The backlog of ``subscription``'s group (see the module's docstring)."""
    topic, group = subscription.topic, subscription.group
    client: Any = subscription.adapter.client
    where = (
        f"group {group!r} of stream {topic!r} on Redis at "
        f"{subscription.adapter.settings.masked_url}"
    )
    with map_exceptions(backlog_errors, what=f"reading the backlog of {where}"):
        info = await group_info(client, topic, group)
        if info is None:
            raise TopicNotFoundError(
                f"{where} does not exist (deleted?): nothing is consumed until it is created again"
            )
        lag = info.get("lag")
        if lag is None:
            last = info["last-delivered-id"]
            lag = len(await client.xrange(topic, b"(" + bytes(last), "+", count=LIMIT))
        idle_ms = int(subscription.adapter.settings.claim_idle * 1000)
        idle = await client.xpending_range(topic, group, "-", "+", LIMIT, idle=idle_ms)
        ids = [entry["message_id"] for entry in idle]
        waiting = await client.zmscore(subscription.delay_key, ids) if ids else []
        due = await client.zcount(subscription.delay_key, "-inf", int(time.time() * 1000))
    # An idle entry in the delay set is counted by ``due`` once due, never before.
    reclaimable = sum(1 for score in waiting if score is None)
    return int(lag) + reclaimable + int(due)
