"""A group's subscription plus its private route, read as one.

Brokers whose groups all read one shared log (JetStream, Redis Streams) deliver
to a single group (:meth:`~eventbus.adapter.Adapter.publish_to_group`, used by
dead-letter replay) through a second source only that group reads, as Kafka's
per-group retry topics do. :class:`WithGroupRoute` merges the topic's
subscription and that route's into the one :class:`~eventbus.adapter.Subscription`
the bus iterates: deliveries from either come out as the topic's, each settled
by its own source.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from eventbus.adapter import Delivery, Subscription
from eventbus.tasks import stop_task

ROUTE_PREFETCH = 1
"""Deliveries a route hands out unsettled. Routed messages are rare (replays), so the
topic keeps its whole prefetch and a routed one may be held beside it."""


class WithGroupRoute(Subscription):
    """``main`` (the topic) and ``route`` (what was sent to this group alone), merged.

    Each source is pumped by its own task (started by the first iteration, ended
    by ``close()``) into one queue, so an idle route never holds up the topic and
    the reverse. An error of either ends the iteration with that error (the bus
    then subscribes again); ``close()`` closes both.
    """

    def __init__(self, main: Subscription, route: Subscription, topic: str) -> None:
        self.main = main
        self.route = route
        self.topic = topic
        self._ready: deque[Delivery] = deque()
        self._wake = asyncio.Event()
        self._error: BaseException | None = None
        self._running = 0
        self._closing = False
        self._pumps: list[asyncio.Task[None]] = []

    async def _pump(self, source: Subscription, relabel: bool) -> None:
        try:
            async for delivery in source:
                if self._closing:  # handed out by the source as it closes: never ours
                    delivery.given_back_unread()
                    continue
                if relabel:
                    delivery.topic = self.topic  # the route's own name is an implementation detail
                self._ready.append(delivery)
                self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._error is None:
                self._error = exc
        finally:
            self._running -= 1
            self._wake.set()

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        if not self._pumps:
            self._running = 2
            self._pumps = [
                asyncio.create_task(self._pump(self.main, False)),
                asyncio.create_task(self._pump(self.route, True)),
            ]
        while True:
            if self._ready:
                yield self._ready.popleft()
                continue
            if self._error is not None:
                raise self._error
            if self._running < 2:  # a source ended: the subscription was closed
                return
            self._wake.clear()
            await self._wake.wait()

    async def backlog(self) -> int | None:
        """What waits on the topic and on the group's route (``None`` if neither can tell)."""
        main, route = await asyncio.gather(self.main.backlog(), self.route.backlog())
        if main is None and route is None:
            return None
        return (main or 0) + (route or 0)

    async def close(self) -> None:
        """Close both sources (each gives back what it holds unsettled), stop pumping.

        What was pumped here and never taken by the bus is marked given back unread
        first (:meth:`~eventbus.adapter.Delivery.given_back_unread`), before its source
        hands it back: the bus never saw it, so no handler ran it."""
        self._closing = True
        while self._ready:
            self._ready.popleft().given_back_unread()
        results = await asyncio.gather(
            self.main.close(), self.route.close(), return_exceptions=True
        )
        for pump in self._pumps:
            await stop_task(pump)
        self._wake.set()
        for result in results:
            if isinstance(result, BaseException):
                raise result
