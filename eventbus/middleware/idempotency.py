"""Idempotency: each event id is handled once per group, even when delivered twice at once.

Claim-before-run: the first delivery claims the id (a lease), runs the handler,
and marks it done; a duplicate that arrives while the claim is held is sent back
for later redelivery (never dropped, in case the first run fails and releases),
and one that arrives after it is done is acknowledged without running.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from eventbus.context import Context
from eventbus.middleware.base import Next, RedeliveryRequested


class Claim(Enum):
    """Outcome of :meth:`IdempotencyStore.claim`."""

    CLAIMED = "claimed"
    IN_PROGRESS = "in_progress"
    DONE = "done"


class IdempotencyStore(Protocol):
    """Where processed ids are remembered. Claims must be atomic across processes
    for the stores that are shared (SQLite file, Redis, PostgreSQL)."""

    async def claim(self, key: str, lease: float) -> Claim:
        """Claim ``key`` for ``lease`` seconds unless it is held or done."""

    async def complete(self, key: str, ttl: float) -> None:
        """Mark ``key`` done, remembered for ``ttl`` seconds."""

    async def release(self, key: str) -> None:
        """Drop the claim on ``key`` so a redelivery can run it."""


class MemoryIdempotencyStore:
    """Per-process store; right for tests and single-instance services.

    It remembers at most ``max_entries`` ids: past that the oldest are forgotten
    first (a very late duplicate of a forgotten id would run again), so memory
    stays bounded whatever the TTL.
    """

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.max_entries = max_entries
        # Insertion-ordered: the first entries are the oldest.
        self._entries: dict[str, tuple[bool, float]] = {}

    async def claim(self, key: str, lease: float) -> Claim:
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry[1] > now:
            return Claim.DONE if entry[0] else Claim.IN_PROGRESS
        self._entries.pop(key, None)
        self._entries[key] = (False, now + lease)
        while len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]
        return Claim.CLAIMED

    async def complete(self, key: str, ttl: float) -> None:
        self._entries[key] = (True, time.monotonic() + ttl)

    async def release(self, key: str) -> None:
        self._entries.pop(key, None)


@dataclass(frozen=True, slots=True)
class Idempotency:
    """Middleware deduplicating by (group, event id).

    ``lease``: how long a claim holds while the handler runs (longer than your
    slowest handler); ``ttl``: how long a done id is remembered (longer than the
    broker's redelivery horizon); ``retry_delay``: when a duplicate seen during a
    claim comes back.
    """

    store: IdempotencyStore
    lease: float = 60.0
    ttl: float = 7 * 24 * 3600.0
    retry_delay: float = 0.5

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        key = f"{ctx.group}:{ctx.envelope.id}"
        claim = await self.store.claim(key, self.lease)
        if claim is Claim.DONE:
            ctx.logger.info("duplicate of an event already handled; skipped")
            return
        if claim is Claim.IN_PROGRESS:
            raise RedeliveryRequested(self.retry_delay, "a duplicate is being handled now")
        try:
            await call_next(ctx)
        except BaseException:
            await asyncio.shield(self.store.release(key))
            raise
        await self.store.complete(key, self.ttl)
