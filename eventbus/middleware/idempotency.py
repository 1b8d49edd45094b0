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
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Protocol

from eventbus.context import Context
from eventbus.errors import IdempotencyStoreError
from eventbus.middleware.base import SKIP, Next, RedeliveryRequested


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
    """A fresh owner token for a claim: 32 random hex digits (as ``uuid4().hex``
    without building the UUID object)."""
    return os.urandom(16).hex()


_DONE = ClaimResult(Claim.DONE)
_IN_PROGRESS = ClaimResult(Claim.IN_PROGRESS)


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


class MemoryIdempotencyStore:
    """Per-process store; right for tests and single-instance services.

    It remembers at most ``max_entries`` ids: past that the oldest handled ones are
    forgotten first, then the oldest claims (a very late duplicate of a forgotten id
    would run again), so memory stays bounded whatever the TTL: ~60 bytes per id
    besides its key.

    It answers without I/O, so besides the store protocol's coroutines it has plain
    ``claim_now``/``complete_now``/``release_now`` methods that :class:`Idempotency`
    calls instead (no coroutine per step; same results). Owner tokens need only be
    unique within this store (it lives in one process): a counter, not random bytes.
    """

    def __init__(self, max_entries: int = 1_000_000) -> None:
        self.max_entries = max_entries
        # Done ids: key -> when forgotten, a plain float (a tuple per id made the
        # memory broker's idempotent path ~10% slower in CPU time). Insertion-ordered,
        # so the first entries are the oldest.
        self._done: dict[str, float] = {}
        # Claims held now: key -> (lease end, owner). A key is in one dict at most.
        self._claims: dict[str, tuple[float, str]] = {}
        self._owners = map(str, itertools.count(1))

    def claim_now(self, key: str, lease: float) -> str | ClaimResult:
        """:meth:`claim`, as a plain call; a new claim is its owner token alone (no
        ``ClaimResult`` made per message)."""
        now = time.monotonic()
        done = self._done
        expires = done.get(key)
        if expires is not None:
            if expires > now:
                return _DONE
            del done[key]  # the ttl ended: claimed again as new
        claims = self._claims
        held = claims.get(key)
        if held is not None:
            if held[0] > now:
                return _IN_PROGRESS
            del claims[key]  # the lease ended: claimed again (the newest entry)
        owner = next(self._owners)
        claims[key] = (now + lease, owner)
        if len(done) + len(claims) > self.max_entries:
            self._forget()
        return owner

    def _forget(self) -> None:
        """Forget the oldest ids past ``max_entries``: done ones first, then claims
        (few: each is completed or released when its handler ends)."""
        done, claims = self._done, self._claims
        while done and len(done) + len(claims) > self.max_entries:
            del done[next(iter(done))]
        while len(claims) > self.max_entries:
            del claims[next(iter(claims))]

    def complete_now(self, key: str, owner: str, ttl: float) -> bool:
        """:meth:`complete`, as a plain call."""
        held = self._claims.pop(key, None)
        done = self._done
        if held is None:
            done.pop(key, None)  # done before, with no claim held: now the newest entry
        done[key] = time.monotonic() + ttl
        return held is not None and held[1] == owner

    def release_now(self, key: str, owner: str) -> bool:
        """:meth:`release`, as a plain call."""
        held = self._claims.get(key)
        if held is None or held[1] != owner:
            return False
        del self._claims[key]
        return True

    async def claim(self, key: str, lease: float) -> ClaimResult:
        claim = self.claim_now(key, lease)
        return ClaimResult(Claim.CLAIMED, claim) if isinstance(claim, str) else claim

    async def complete(self, key: str, owner: str, ttl: float) -> bool:
        return self.complete_now(key, owner, ttl)

    async def release(self, key: str, owner: str) -> bool:
        return self.release_now(key, owner)

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
    # A store that answers without I/O (MemoryIdempotencyStore) has plain-call twins of
    # claim/complete/release: called instead, no coroutine per step.
    _now: tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]] | None = field(
        init=False, repr=False, compare=False, default=None
    )

    # The runner may call this layer's steps itself (eventbus.middleware.base): when
    # the store answers without I/O, guard_steps() gives them as plain calls.
    guards: ClassVar[bool] = True

    def __post_init__(self) -> None:
        names = ("claim", "complete", "release")
        if all(_has_twin(self.store, name) for name in names):
            twins = tuple(getattr(self.store, f"{name}_now") for name in names)
            object.__setattr__(self, "_now", twins)

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        key = f"{ctx.topic}:{ctx.group}:{ctx.envelope.id}"  # idempotency_key(), inlined
        now = self._now
        try:
            claim = (
                now[0](key, self.lease)
                if now is not None
                else await self.store.claim(key, self.lease)
            )
        except Exception as exc:
            raise self._claim_failed(ctx, exc) from exc
        owner: str
        if type(claim) is str:
            owner = claim
        else:
            claimed = self._owner(ctx, claim)
            if claimed is None:
                return
            owner = claimed
        try:
            await call_next(ctx)
        except BaseException:
            await asyncio.shield(self._release(ctx, key, owner))
            raise
        try:
            owned = (
                now[1](key, owner, self.ttl)
                if now is not None
                else await self.store.complete(key, owner, self.ttl)
            )
        except Exception as exc:
            self._complete_failed(ctx, exc)
            return
        if not owned:
            self._outlived(ctx)

    def guard_steps(
        self,
    ) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]] | None:
        """``(enter, leave, abandon)`` as plain calls, for the runner to call around the
        handler instead of this layer's coroutine (see :mod:`eventbus.middleware.base`);
        ``None`` when the store does I/O (its coroutines are awaited in ``__call__``)."""
        if self._now is None:
            return None
        return (self._enter, self._leave, self._abandon)

    def _enter(self, ctx: Context) -> tuple[str, str] | object:
        """``__call__`` up to ``call_next``: the claim's (key, owner), or ``SKIP``."""
        key = f"{ctx.topic}:{ctx.group}:{ctx.envelope.id}"
        try:
            claim = self._now[0](key, self.lease)  # type: ignore[index]
        except Exception as exc:
            raise self._claim_failed(ctx, exc) from exc
        if type(claim) is str:
            return (key, claim)
        owner = self._owner(ctx, claim)
        return SKIP if owner is None else (key, owner)

    def _leave(self, ctx: Context, token: tuple[str, str]) -> None:
        """``__call__`` after ``call_next`` returned: mark the id done."""
        try:
            owned = self._now[1](token[0], token[1], self.ttl)  # type: ignore[index]
        except Exception as exc:
            self._complete_failed(ctx, exc)
            return
        if not owned:
            self._outlived(ctx)

    def _abandon(self, ctx: Context, token: tuple[str, str]) -> None:
        """``__call__`` once ``call_next`` raised: release the claim."""
        try:
            self._now[2](token[0], token[1])  # type: ignore[index]
        except Exception as exc:
            self._release_failed(ctx, exc)

    def _claim_failed(self, ctx: Context, exc: Exception) -> IdempotencyStoreError:
        return IdempotencyStoreError(
            f"idempotency store {type(self.store).__name__} could not claim event "
            f"{ctx.envelope.id} on topic {ctx.topic!r} group {ctx.group!r} "
            f"({type(exc).__name__}: {exc}); the handler did not run and the message "
            "goes back to the broker to be tried when the store answers again"
        )

    def _complete_failed(self, ctx: Context, exc: Exception) -> None:
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

    def _outlived(self, ctx: Context) -> None:
        ctx.logger.warning(
            "the handler outlived its %.0fs idempotency lease, so another delivery "
            "may have run it too; marked done anyway. Raise Idempotency.lease above "
            "the slowest handler",
            self.lease,
        )

    def _owner(self, ctx: Context, claim: ClaimResult) -> str | None:
        """The owner token of a new claim; ``None`` for an id already handled (skip it);
        raises for one being handled now (redeliver later) or a claim without a token."""
        status = claim.status
        if status is Claim.DONE:
            ctx.logger.info("duplicate of an event already handled; skipped")
            return None
        if status is Claim.IN_PROGRESS:
            raise RedeliveryRequested(self.retry_delay, "a duplicate is being handled now")
        if claim.owner is None:
            raise IdempotencyStoreError(
                f"idempotency store {type(self.store).__name__} claimed event "
                f"{ctx.envelope.id} on topic {ctx.topic!r} group {ctx.group!r} without an "
                "owner token; fix the store: ClaimResult(Claim.CLAIMED, owner) is required"
            )
        return claim.owner

    async def _release(self, ctx: Context, key: str, owner: str) -> None:
        if self._now is not None:
            self._abandon(ctx, (key, owner))
            return
        try:
            await self.store.release(key, owner)
        except Exception as exc:
            self._release_failed(ctx, exc)

    def _release_failed(self, ctx: Context, exc: Exception) -> None:
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


def _has_twin(store: object, name: str) -> bool:
    """Whether ``store``'s ``name`` coroutine method has a plain-call twin ``<name>_now``
    defined beside it (by the same class: a subclass that overrides ``claim`` alone,
    a store that fails in tests, keeps its override called)."""
    for klass in type(store).__mro__:
        if name in vars(klass):
            return callable(vars(klass).get(f"{name}_now"))
    return False
