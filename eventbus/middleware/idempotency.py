"""Idempotency: each event id is handled once per (topic, group), even when delivered twice at once.

Claim-before-run: the first delivery claims the id (a lease held by an owner
token), runs the handler, and marks it done; a duplicate that arrives while the
claim is held is sent back for later redelivery (never dropped, in case the first
run fails and releases), and one that arrives after it is done is acknowledged
without running.

Failures of the store are not failures of the handler: a store that cannot claim
raises :class:`~eventbus.errors.IdempotencyStoreError`, which the dead-letter step
passes on so the message is redelivered later; a store that cannot mark a handled
id done is logged at ERROR and the message is acknowledged, because its effect
already happened.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from eventbus.context import Context
from eventbus.errors import IdempotencyStoreError
from eventbus.middleware.base import Next, RedeliveryRequested


class Claim(Enum):
    """Status of an id after :meth:`IdempotencyStore.claim`."""

    CLAIMED = "claimed"
    IN_PROGRESS = "in_progress"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """What :meth:`IdempotencyStore.claim` found.

    ``owner`` is the token of the new claim when ``status`` is ``CLAIMED`` (pass it
    to ``complete`` and ``release``), otherwise ``None``.
    """

    status: Claim
    owner: str | None = None


def idempotency_key(topic: str, group: str, event_id: str) -> str:
    """The store key of ``event_id`` handled on ``topic`` by ``group``.

    The topic is part of it: the same event forwarded to a second topic (a
    bridge, a DLQ replay to another topic) is a different piece of work.
    """
    return f"{topic}:{group}:{event_id}"


def new_owner() -> str:
    """A fresh owner token for a claim."""
    return uuid.uuid4().hex


class IdempotencyStore(Protocol):
    """Where processed ids are remembered. Claims must be atomic across processes
    for the stores that are shared (SQLite file, Redis, PostgreSQL).

    Every claim has an owner token, so a run whose lease expired cannot release
    the claim of the run that took over.
    """

    async def claim(self, key: str, lease: float) -> ClaimResult:
        """Claim ``key`` for ``lease`` seconds unless it is held or done."""

    async def complete(self, key: str, owner: str, ttl: float) -> bool:
        """Mark ``key`` done for ``ttl`` seconds, whoever holds it now (the effect happened).

        Returns whether ``owner`` still held the claim: ``False`` means its lease
        expired first, so another delivery may have run the handler too.
        """

    async def release(self, key: str, owner: str) -> bool:
        """Drop ``owner``'s claim on ``key`` so a redelivery can run it.

        Does nothing (and returns ``False``) if ``owner`` no longer holds the
        claim or the id is done.
        """

    async def close(self) -> None:
        """Release connections and threads; the bus calls it when it stops."""


@dataclass(slots=True)
class _Record:
    done: bool
    expires: float
    owner: str


class MemoryIdempotencyStore:
    """Per-process store; right for tests and single-instance services.

    It remembers at most ``max_entries`` ids: past that the oldest are forgotten
    first (a very late duplicate of a forgotten id would run again), so memory
    stays bounded whatever the TTL.
    """

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.max_entries = max_entries
        # Insertion-ordered: the first entries are the oldest.
        self._entries: dict[str, _Record] = {}

    async def claim(self, key: str, lease: float) -> ClaimResult:
        now = time.monotonic()
        record = self._entries.get(key)
        if record is not None and record.expires > now:
            return ClaimResult(Claim.DONE if record.done else Claim.IN_PROGRESS)
        owner = new_owner()
        self._entries.pop(key, None)
        self._entries[key] = _Record(False, now + lease, owner)
        while len(self._entries) > self.max_entries:
            del self._entries[next(iter(self._entries))]
        return ClaimResult(Claim.CLAIMED, owner)

    async def complete(self, key: str, owner: str, ttl: float) -> bool:
        record = self._entries.pop(key, None)
        owned = record is not None and not record.done and record.owner == owner
        self._entries[key] = _Record(True, time.monotonic() + ttl, owner)
        return owned

    async def release(self, key: str, owner: str) -> bool:
        record = self._entries.get(key)
        if record is None or record.done or record.owner != owner:
            return False
        del self._entries[key]
        return True

    async def close(self) -> None:
        """Nothing to release; here so every store can be closed the same way."""


@dataclass(frozen=True, slots=True)
class Idempotency:
    """Middleware deduplicating by (topic, group, event id).

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
        key = idempotency_key(ctx.topic, ctx.group, ctx.envelope.id)
        try:
            claim = await self.store.claim(key, self.lease)
        except Exception as exc:
            raise IdempotencyStoreError(
                f"idempotency store {type(self.store).__name__} could not claim event "
                f"{ctx.envelope.id} on topic {ctx.topic!r} group {ctx.group!r} "
                f"({type(exc).__name__}: {exc}); the handler did not run and the message "
                "goes back to the broker to be tried when the store answers again"
            ) from exc
        if claim.status is Claim.DONE:
            ctx.logger.info("duplicate of an event already handled; skipped")
            return
        if claim.status is Claim.IN_PROGRESS:
            raise RedeliveryRequested(self.retry_delay, "a duplicate is being handled now")
        owner = claim.owner
        if owner is None:
            raise IdempotencyStoreError(
                f"idempotency store {type(self.store).__name__} claimed event "
                f"{ctx.envelope.id} on topic {ctx.topic!r} group {ctx.group!r} without an "
                "owner token; fix the store: ClaimResult(Claim.CLAIMED, owner) is required"
            )
        try:
            await call_next(ctx)
        except BaseException:
            await asyncio.shield(self._release(ctx, key, owner))
            raise
        try:
            owned = await self.store.complete(key, owner, self.ttl)
        except Exception as exc:
            # The effect happened: acknowledging is right, dead-lettering or
            # redelivering would repeat it. The claim stays until its lease ends.
            ctx.logger.error(
                "event handled, but idempotency store %s could not mark it done (%s: %s); "
                "acknowledged anyway. A duplicate arriving after the %.0fs lease would "
                "run again",
                type(self.store).__name__,
                type(exc).__name__,
                exc,
                self.lease,
                exc_info=exc,
            )
            return
        if not owned:
            ctx.logger.warning(
                "the handler outlived its %.0fs idempotency lease, so another delivery "
                "may have run it too; marked done anyway. Raise Idempotency.lease above "
                "the slowest handler",
                self.lease,
            )

    async def _release(self, ctx: Context, key: str, owner: str) -> None:
        try:
            await self.store.release(key, owner)
        except Exception as exc:
            # The handler's own failure is what matters to retry and dead-letter;
            # the claim simply holds until its lease ends.
            ctx.logger.error(
                "idempotency store %s could not release the claim after a failure "
                "(%s: %s); redeliveries wait for the %.0fs lease to end",
                type(self.store).__name__,
                type(exc).__name__,
                exc,
                self.lease,
            )
