"""Refusing competing consumers on Redis Pub/Sub, which has no groups.

On Pub/Sub every subscriber gets every message, so two members of one group do
not compete: each handles every message. A group with competing consumers is
therefore refused when it starts: each Pub/Sub subscription also subscribes to
its group's *member channel*, ``eventbus:members:<group>:<topic>`` (nothing is
published there), and Redis's ``PUBSUB NUMSUB`` of that channel counts the
group's live members across every process. The subscription that finds another
member already there (or another one in its own process) fails with
:class:`~eventbus.errors.GuaranteeUnavailableError` pointing to Streams; two
members starting at the same instant both find each other and both fail.

The count is taken when a (topic, group) first starts in an adapter; a
re-subscribe after a dropped connection is not refused (the server may still
count the dropped connection for a moment). Sharded Pub/Sub is not counted
(a member channel would live in another slot).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from eventbus.errors import GuaranteeUnavailableError

if TYPE_CHECKING:
    from .pubsub import PubSubSubscription, RedisPubSubAdapter

log = logging.getLogger("eventbus.redis")


def member_channel(topic: str, group: str) -> str:
    """The channel every live Pub/Sub subscription of ``group`` on ``topic`` joins."""
    return f"eventbus:members:{group}:{topic}"


async def refuse_second_member(
    adapter: RedisPubSubAdapter, subscription: PubSubSubscription, started: set[tuple[str, str]]
) -> None:
    """Raise GuaranteeUnavailableError if ``subscription``'s group has another live member."""
    topic, group = subscription.topic, subscription.options.group
    here = [
        other
        for other in adapter.live_subscriptions()
        if other is not subscription and other.topic == topic and other.options.group == group
    ]
    members = 1 + len(here)
    if not here and (topic, group) not in started and not adapter.settings.sharded:
        client: Any = adapter.client
        try:
            replies = await client.pubsub_numsub(member_channel(topic, group))
            members = max(members, int(replies[0][1]))
        except Exception as exc:  # a refused command must not stop the service
            log.warning(
                "could not count the members of group %r on Redis channel %r "
                "(%s: %s); competing consumers are not checked",
                group,
                topic,
                type(exc).__name__,
                exc,
            )
    started.add((topic, group))
    if members > 1:
        broker = adapter.settings.masked_url
        raise GuaranteeUnavailableError(
            f"group {group!r} of topic {topic!r} already has {members - 1} other live "
            f"subscriber(s) on Redis Pub/Sub at {broker}: Pub/Sub has no consumer groups, "
            "so members of a group would not compete, each would handle every message. "
            f"Use {adapter.stronger} instead for competing consumers, or give each "
            "subscriber its own group if every one should get every message",
            topic=topic,
            broker=broker,
            instead=adapter.stronger,
        )
