"""Retry with exponential backoff and jitter: in process first, then broker redelivery."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import ClassVar

from eventbus.backoff import Backoff
from eventbus.context import Context
from eventbus.errors import PoisonMessageError, RunsExhaustedError
from eventbus.incidents import note
from eventbus.middleware.base import Next, RedeliveryRequested


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a failing handler is tried again.

    ``max_attempts`` counts every run of the handler, across redeliveries. Each
    delivery gets up to ``in_process_attempts`` runs, separated by backoff sleeps;
    when they are spent the message goes back to the broker with a delay
    (``nack(delay)``, native where the broker has it), and once ``max_attempts``
    is reached the failure goes on to the dead-letter step. Delays grow as
    ``initial_delay * multiplier ** (attempt - 1)``, capped at ``max_delay``, with
    up to ``jitter`` (a fraction) of random spread so retries don't stampede (the
    power is capped before it is computed, so any attempt number is safe).

    Counting: an attempt is a real run of the handler. The runner tells the chain
    how many runs this message already had (``Context.previous_attempts``): runs it
    counted itself in this process for the same (topic, group, event id), plus one
    for each earlier broker delivery it never saw (another process, a restart),
    since that delivery may have run and crashed. The broker's delivery count is
    only that upper bound: deliveries that never reached the handler (an
    idempotency "in progress" bounce, work cancelled at shutdown, work dropped
    after a reconnect) do not count.

    ``retry_on`` limits which exceptions are retried; ``give_up_on`` ones are
    dead-lettered at once. Poison messages (undecodable, unknown type, invalid
    data) are never retried.

    ::

        RetryPolicy(max_attempts=5, in_process_attempts=2, initial_delay=0.5,
                    give_up_on=(ValueError,))
    """

    max_attempts: int = 5
    in_process_attempts: int = 3
    initial_delay: float = 0.2
    multiplier: float = 2.0
    max_delay: float = 30.0
    jitter: float = 0.1
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    give_up_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.in_process_attempts < 1:
            raise ValueError("max_attempts and in_process_attempts must be at least 1")
        self.backoff  # noqa: B018 - checks the delay settings now, not at the first failure

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return self.backoff.delay(attempt)

    @property
    def backoff(self) -> Backoff:
        """The delay schedule of this policy."""
        return Backoff(self.initial_delay, self.multiplier, self.max_delay, self.jitter)

    def should_retry(self, exc: BaseException) -> bool:
        """Whether ``exc`` may be retried at all."""
        if isinstance(exc, PoisonMessageError | RedeliveryRequested):
            return False
        if self.give_up_on and isinstance(exc, self.give_up_on):
            return False
        return isinstance(exc, self.retry_on)


NO_RETRY = RetryPolicy(max_attempts=1, in_process_attempts=1)


@dataclass(frozen=True, slots=True)
class Retry:
    """Middleware applying a :class:`RetryPolicy`.

    ``broker_redelivery`` is False for at-most-once subscriptions and brokers
    without redelivery: then every attempt happens in process. ``guard_crashes``: a
    delivery whose earlier runs never finished and already spent ``max_attempts`` is
    failed with :class:`~eventbus.errors.RunsExhaustedError` before it runs (the
    dead-letter step keeps it); off when dead letters are off.

    Declares ``acts_only_on_failure`` (see :mod:`eventbus.middleware.base`): before the
    handler runs it may only :meth:`refuse` the message; everything else happens in
    :meth:`recover`, once the handler failed.
    """

    acts_only_on_failure: ClassVar[bool] = True
    policy: RetryPolicy
    broker_redelivery: bool = True
    guard_crashes: bool = True

    def refuse(self, ctx: Context) -> RunsExhaustedError | None:
        """The failure to dead-letter ``ctx``'s message with before it runs again, when
        its earlier runs (which never finished: see :class:`RunsExhaustedError`)
        already spent the budget; ``None`` when it may run."""
        runs = ctx.previous_attempts
        if runs < self.policy.max_attempts or not (self.broker_redelivery and self.guard_crashes):
            return None
        ctx.items["attempts"] = runs
        return RunsExhaustedError(
            f"event {ctx.envelope.id} ({ctx.envelope.type}) on topic {ctx.topic!r} group "
            f"{ctx.group!r} came back after {runs} run(s) of its handler that never "
            f"finished (max_attempts={self.policy.max_attempts}): each ended with its "
            "process, or its outcome was lost. Dead-lettered instead of running it again; "
            "find out why it kills the consumer before replaying it"
        )

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        # Real runs spent on earlier deliveries of this message, as the runner counted them.
        ctx.attempt = ctx.previous_attempts + 1
        crashed = self.refuse(ctx)
        if crashed is not None:
            raise crashed
        try:
            await call_next(ctx)
            return
        except Exception as exc:
            failure = exc
        # Outside the except block, as every later attempt runs: an exception raised
        # by a retry does not carry this one as its context.
        await self.recover(ctx, call_next, failure)

    async def recover(self, ctx: Context, call_next: Next, exc: Exception) -> None:
        """Go on after the first run of this delivery raised ``exc``: retry in process,
        ask for a redelivery, or raise ``exc`` on to the dead-letter step.

        Split from ``__call__`` so the runner can call the handler directly and pay
        for this step only when it fails (the success path does nothing here).
        """
        policy = self.policy
        per_delivery = policy.in_process_attempts if self.broker_redelivery else policy.max_attempts
        attempt = ctx.previous_attempts + 1
        local = 1
        while True:
            if not policy.should_retry(exc) or attempt >= policy.max_attempts:
                raise exc
            delay = policy.delay(attempt)
            if local >= per_delivery:
                ctx.logger.warning(
                    "attempt %d failed (%s: %s); broker redelivery in %.2fs",
                    attempt,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                note(ctx, "redelivery", exc, attempt=attempt, delay=delay)
                raise RedeliveryRequested(delay, f"attempt {attempt} failed") from exc
            ctx.logger.info(
                "attempt %d failed (%s: %s); retrying in %.2fs",
                attempt,
                type(exc).__name__,
                exc,
                delay,
            )
            note(ctx, "retry", exc, attempt=attempt, delay=delay)
            await asyncio.sleep(delay)
            attempt += 1
            local += 1
            ctx.attempt = attempt
            try:
                await call_next(ctx)
                return
            except Exception as again:
                exc = again
