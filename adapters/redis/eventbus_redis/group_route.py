"""Delivering to one group of a topic on Redis Streams (dead-letter replay to the failed group).

Every group of a topic reads the topic's stream, so an entry for one group alone
goes to that group's route stream, ``eventbus:replay:<group>:<topic>``: the
group's consumer group on it is created from its first entry, and each
subscription of the group reads it beside the topic's stream
(:class:`~eventbus.group_route.WithGroupRoute`), with the same acks, delays,
reclaiming and attempts. The other groups never read it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from eventbus.adapter import SubscribeOptions, Subscription
from eventbus.group_route import ROUTE_PREFETCH, WithGroupRoute

if TYPE_CHECKING:
    from .adapter import RedisStreamsAdapter


class RoutedStreams(WithGroupRoute):
    """The topic's and the route's consumer, merged, with the backlog of both."""

    async def backlog(self) -> int | None:
        """The group's backlog on the topic's stream plus on its route stream."""
        total = 0
        for source in (self.main, self.route):
            count = await source.backlog()
            total += count or 0
        return total


def route_key(topic: str, group: str) -> str:
    """The stream holding what was sent to ``group`` of ``topic`` alone."""
    return f"eventbus:replay:{group}:{topic}"


async def subscribe_with_route(
    adapter: RedisStreamsAdapter, topic: str, options: SubscribeOptions
) -> Subscription:
    """One consumer of ``options.group`` on ``topic`` and one on the group's route."""
    from .consumer import StreamSubscription

    main = StreamSubscription(adapter, topic, options)
    await main.start()
    adapter.track(main)
    # From the route's first entry: what was sent before the group subscribed waits.
    # The route stream is the adapter's own, so it is created whatever ``provision`` says.
    route = StreamSubscription(
        adapter,
        route_key(topic, options.group),
        replace(options, prefetch=ROUTE_PREFETCH, start_from="earliest"),
        provision=True,
    )
    try:
        await route.start()
    except BaseException:
        await main.close()
        raise
    adapter.track(route)
    return RoutedStreams(main, route, topic)
