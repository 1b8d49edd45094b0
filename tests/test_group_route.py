"""``WithGroupRoute``: what it pumped and the bus never took is given back unread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from eventbus.adapter import Delivery, Subscription
from eventbus.group_route import WithGroupRoute


class Counted(Delivery):
    """A delivery whose broker counts deliveries: it notes being given back unread."""

    def __init__(self, name: str) -> None:
        super().__init__(topic="t", group="g", message_id=name)
        self.unread = 0

    def given_back_unread(self) -> None:
        self.unread += 1

    async def _ack(self) -> None:
        pass

    async def _nack(self, delay: float) -> None:
        pass

    async def _reject(self) -> None:
        pass


class Source(Subscription):
    """Hands out its deliveries, then waits until closed; one more arrives as it closes."""

    def __init__(self, names: list[str], late: str | None = None) -> None:
        self.deliveries = [Counted(name) for name in names]
        self.late = Counted(late) if late else None
        self._closed = asyncio.Event()
        self._arrived = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        for delivery in self.deliveries:
            yield delivery
        await self._closed.wait()
        if self.late is not None:
            yield self.late  # a fetch answered as the subscription closed

    async def close(self) -> None:
        self._closed.set()
        await asyncio.sleep(0)


def test_what_the_bus_never_took_is_given_back_unread() -> None:
    async def body() -> None:
        main, route = Source(["m1", "m2", "m3"], late="m4"), Source(["r1"])
        merged = WithGroupRoute(main, route, "t")
        iterator = merged.__aiter__()
        taken = await anext(iterator)  # the bus takes one; the pumps fetch the rest
        for _ in range(5):
            await asyncio.sleep(0)
        await merged.close()
        everything = [*main.deliveries, route.deliveries[0], main.late]
        unread = {d.message_id: d.unread for d in everything if d is not taken}
        assert taken.message_id == "m1"
        assert unread == {"m2": 1, "m3": 1, "r1": 1, "m4": 1}
        assert taken.unread == 0  # the bus has it: the bus counts its run
        assert [d async for d in iterator] == []

    asyncio.run(body())
