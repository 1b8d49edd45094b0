"""Exponential backoff with a cap and jitter: the one schedule for every wait-and-retry.

The runner's re-subscribe loop and :class:`~eventbus.middleware.retry.RetryPolicy`
use it; adapters that reconnect by themselves should too::

    backoff = Backoff(initial=0.05, max_delay=2.0)
    for delay in backoff:          # 0.05, 0.1, 0.2, ... 2.0, 2.0, ... (± jitter)
        try:
            return await connect()
        except BrokerConnectionError:
            await asyncio.sleep(delay)
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass


def capped_exponential(initial: float, multiplier: float, max_delay: float, attempt: int) -> float:
    """``initial * multiplier ** (attempt - 1)`` capped at ``max_delay``, for any ``attempt``.

    The power is never computed past the point where it reaches the cap, so a
    policy that retries "practically forever" never overflows.
    """
    exponent = max(0, attempt - 1)
    if initial <= 0 or max_delay <= 0:
        return max(0.0, min(initial, max_delay))
    if multiplier > 1:
        # Past this exponent the delay is at the cap anyway.
        ceiling = 0
        if max_delay > initial:
            ceiling = math.ceil(math.log(max_delay / initial, multiplier)) + 1
        exponent = min(exponent, ceiling)
    elif multiplier <= 0:
        return min(initial, max_delay) if exponent == 0 else 0.0
    try:
        return float(min(max_delay, initial * multiplier**exponent))
    except OverflowError:  # pragma: no cover - guarded by the ceiling above
        return float(max_delay)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays growing by ``multiplier`` from ``initial`` up to ``max_delay``, each spread
    by up to ``jitter`` (a fraction, 0.1 = ±10 %) so many waiters don't retry in step.

    Iterating gives an endless series of delays; :meth:`delay` gives the one after
    failed attempt number ``attempt`` (1-based).
    """

    initial: float = 0.05
    multiplier: float = 2.0
    max_delay: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.initial < 0 or self.max_delay < 0 or not 0 <= self.jitter <= 1:
            raise ValueError(
                "Backoff needs initial >= 0, max_delay >= 0 and 0 <= jitter <= 1; got "
                f"initial={self.initial}, max_delay={self.max_delay}, jitter={self.jitter}"
            )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based), with jitter."""
        base = capped_exponential(self.initial, self.multiplier, self.max_delay, attempt)
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, base)

    def __iter__(self) -> Iterator[float]:
        attempt = 0
        while True:
            attempt += 1
            yield self.delay(attempt)
