"""Helpers the NATS adapter's tests share: run a scenario with a deadline, take the next
delivery of a subscription, wait for a condition."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from eventbus.adapter import Delivery, Subscription


def run(scenario: Coroutine[Any, Any, None], timeout: float = 90.0) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout))


async def next_delivery(subscription: Subscription, timeout: float = 10.0) -> Delivery:
    iterator: Any = subscription.__aiter__()
    return await asyncio.wait_for(iterator.__anext__(), timeout)


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)
