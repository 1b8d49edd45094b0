"""Middleware: retry policy and retry, idempotency stores, timeout, composition, dead letters."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

import pytest

from eventbus import EventBus, MemoryAdapter, PoisonMessageError, SchemaError
from eventbus.adapter import SubscribeOptions
from eventbus.context import Context, current_envelope
from eventbus.deadletters import UNDECODABLE_TYPE, dead_letter_undecodable
from eventbus.envelope import Envelope
from eventbus.errors import (
    BrokerConnectionError,
    DeadLetterPublishError,
    HandlerTimeoutError,
    IdempotencyStoreError,
    InfrastructureError,
)
from eventbus.middleware import (
    NO_RETRY,
    Claim,
    ClaimResult,
    DeadLetter,
    Idempotency,
    MemoryIdempotencyStore,
    RedeliveryRequested,
    Retry,
    RetryPolicy,
    Timeout,
    compose,
    correlation,
)
from tests.bus_support import FakeDelivery

WAIT = 5.0


def make_ctx(
    attempt: int = 1, envelope: Envelope | None = None, adapter: str = "memory://middleware-tests"
) -> Context:
    env = envelope or Envelope.create(type="t", source="s", data=b"{}", correlationid="corr")
    return Context(EventBus(adapter), FakeDelivery(env, attempt), env)


class Flaky:
    """A handler failing ``failures`` times with ``exc`` before it succeeds."""

    def __init__(self, failures: int, exc: type[Exception] = RuntimeError) -> None:
        self.failures = failures
        self.exc = exc
        self.attempts: list[int] = []

    async def __call__(self, ctx: Context) -> None:
        self.attempts.append(ctx.attempt)
        if len(self.attempts) <= self.failures:
            raise self.exc(f"failure {len(self.attempts)}")


# -- RetryPolicy -------------------------------------------------------------------------


def test_delay_grows_exponentially_and_is_capped_without_jitter() -> None:
    policy = RetryPolicy(initial_delay=0.5, multiplier=3.0, max_delay=10.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_jitter_stays_within_its_fraction_and_actually_spreads() -> None:
    policy = RetryPolicy(initial_delay=1.0, multiplier=2.0, max_delay=100.0, jitter=0.25)
    for attempt, base in ((1, 1.0), (3, 4.0)):
        samples = [policy.delay(attempt) for _ in range(500)]
        assert all(base * 0.75 <= s <= base * 1.25 for s in samples)
        assert max(samples) - min(samples) > base * 0.2  # not a constant


def test_jitter_applies_to_the_capped_delay() -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=2.0, jitter=0.5)
    assert all(1.0 <= policy.delay(10) <= 3.0 for _ in range(200))


@pytest.mark.parametrize(("max_attempts", "in_process"), [(0, 1), (1, 0), (-1, 3)])
def test_policy_rejects_fewer_than_one_attempt(max_attempts: int, in_process: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(max_attempts=max_attempts, in_process_attempts=in_process)


def test_should_retry_filters() -> None:
    default = RetryPolicy()
    assert default.should_retry(RuntimeError())
    assert not default.should_retry(SchemaError("bad"))
    assert not default.should_retry(PoisonMessageError("bad"))
    assert not default.should_retry(RedeliveryRequested(1.0))
    assert not default.should_retry(KeyboardInterrupt())  # not an Exception
    only_io = RetryPolicy(retry_on=(OSError,))
    assert only_io.should_retry(ConnectionError()) and not only_io.should_retry(ValueError())
    give_up = RetryPolicy(give_up_on=(ValueError,))
    assert not give_up.should_retry(ValueError()) and give_up.should_retry(KeyError())
    assert NO_RETRY.max_attempts == 1


# -- Retry middleware --------------------------------------------------------------------


def test_retry_in_process_until_success() -> None:
    handler = Flaky(failures=2)
    ctx = make_ctx()
    retry = Retry(RetryPolicy(max_attempts=5, in_process_attempts=3, initial_delay=0.001))
    asyncio.run(retry(ctx, handler))
    assert handler.attempts == [1, 2, 3]
    assert ctx.attempt == 3


def test_retry_hands_over_to_broker_with_the_backoff_delay() -> None:
    handler = Flaky(failures=10)
    policy = RetryPolicy(
        max_attempts=5, in_process_attempts=2, initial_delay=0.001, multiplier=10.0, jitter=0.0
    )
    with pytest.raises(RedeliveryRequested) as info:
        asyncio.run(Retry(policy)(make_ctx(), handler))
    assert handler.attempts == [1, 2]
    assert info.value.delay == pytest.approx(0.01)  # delay after attempt 2
    assert isinstance(info.value.__cause__, RuntimeError)


def test_retry_counts_attempts_across_redeliveries_and_gives_up() -> None:
    policy = RetryPolicy(max_attempts=5, in_process_attempts=2, initial_delay=0.001)
    second = Flaky(failures=10)
    ctx = make_ctx(attempt=2)
    ctx.previous_attempts = 2  # the runner counted two real runs on the first delivery
    with pytest.raises(RedeliveryRequested):
        asyncio.run(Retry(policy)(ctx, second))
    assert second.attempts == [3, 4]
    third = Flaky(failures=10)
    ctx = make_ctx(attempt=3)
    ctx.previous_attempts = 4
    with pytest.raises(RuntimeError, match="failure 1"):
        asyncio.run(Retry(policy)(ctx, third))
    assert third.attempts == [5]
    assert ctx.attempt == 5


def test_retry_never_retries_poison_or_give_up_errors() -> None:
    for exc, policy in (
        (SchemaError, RetryPolicy()),
        (ValueError, RetryPolicy(give_up_on=(ValueError,))),
    ):
        handler = Flaky(failures=10, exc=exc)
        ctx = make_ctx()
        with pytest.raises(exc):
            asyncio.run(Retry(policy)(ctx, handler))
        assert handler.attempts == [1]
        assert ctx.attempt == 1


def test_retry_without_broker_redelivery_spends_every_attempt_in_process() -> None:
    handler = Flaky(failures=10)
    policy = RetryPolicy(max_attempts=4, in_process_attempts=1, initial_delay=0.001)
    with pytest.raises(RuntimeError):
        asyncio.run(Retry(policy, broker_redelivery=False)(make_ctx(), handler))
    assert handler.attempts == [1, 2, 3, 4]


def test_retry_passes_redelivery_requests_through() -> None:
    async def busy(ctx: Context) -> None:
        raise RedeliveryRequested(0.3, "busy")

    with pytest.raises(RedeliveryRequested) as info:
        asyncio.run(Retry(RetryPolicy(initial_delay=0.001))(make_ctx(), busy))
    assert info.value.delay == 0.3


# -- Idempotency -------------------------------------------------------------------------


def test_idempotency_runs_once_and_skips_done_duplicates() -> None:
    async def scenario() -> None:
        store = MemoryIdempotencyStore()
        middleware = Idempotency(store)
        calls: list[str] = []

        async def handler(ctx: Context) -> None:
            calls.append(ctx.envelope.id)

        ctx = make_ctx()
        await middleware(ctx, handler)
        await middleware(Context(ctx.publisher, ctx.delivery, ctx.envelope), handler)
        assert calls == [ctx.envelope.id]
        # Another group handles the same event independently.
        other = Context(ctx.publisher, FakeDelivery(ctx.envelope, group="shipping"), ctx.envelope)
        await middleware(other, handler)
        assert len(calls) == 2

    asyncio.run(scenario())


def test_idempotency_sends_back_a_duplicate_seen_while_claimed() -> None:
    async def scenario() -> None:
        middleware = Idempotency(MemoryIdempotencyStore(), retry_delay=0.25)
        started, release = asyncio.Event(), asyncio.Event()
        runs: list[int] = []

        async def slow(ctx: Context) -> None:
            runs.append(1)
            started.set()
            await release.wait()

        first = make_ctx()
        task = asyncio.create_task(middleware(first, slow))
        await asyncio.wait_for(started.wait(), WAIT)
        duplicate = Context(first.publisher, first.delivery, first.envelope)
        with pytest.raises(RedeliveryRequested) as info:
            await middleware(duplicate, slow)
        assert info.value.delay == 0.25
        release.set()
        await asyncio.wait_for(task, WAIT)
        assert runs == [1]

    asyncio.run(scenario())


def test_idempotency_releases_the_claim_when_the_handler_fails() -> None:
    async def scenario() -> None:
        middleware = Idempotency(MemoryIdempotencyStore())
        handler = Flaky(failures=1)
        ctx = make_ctx()
        with pytest.raises(RuntimeError):
            await middleware(ctx, handler)
        await middleware(Context(ctx.publisher, ctx.delivery, ctx.envelope), handler)
        assert len(handler.attempts) == 2

    asyncio.run(scenario())


def test_idempotency_turns_a_claim_failure_into_an_infrastructure_error() -> None:
    class Down(MemoryIdempotencyStore):
        async def claim(self, key: str, lease: float) -> ClaimResult:
            raise ConnectionError("refused")

    handler = Flaky(failures=0)
    ctx = make_ctx()
    with pytest.raises(IdempotencyStoreError) as info:
        asyncio.run(Idempotency(Down())(ctx, handler))
    assert handler.attempts == []
    assert isinstance(info.value, InfrastructureError)
    assert ctx.envelope.id in str(info.value) and "'orders'" in str(info.value)


def test_idempotency_refuses_a_claim_without_an_owner_token() -> None:
    class Ownerless(MemoryIdempotencyStore):
        async def claim(self, key: str, lease: float) -> ClaimResult:
            return ClaimResult(Claim.CLAIMED)

    handler = Flaky(failures=0)
    with pytest.raises(IdempotencyStoreError, match="without an owner token"):
        asyncio.run(Idempotency(Ownerless())(make_ctx(), handler))
    assert handler.attempts == []


def test_idempotency_keeps_the_handler_error_when_the_release_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class NoRelease(MemoryIdempotencyStore):
        async def release(self, key: str, owner: str) -> bool:
            raise ConnectionError("refused")

    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="failure 1"):
        asyncio.run(Idempotency(NoRelease())(make_ctx(), Flaky(failures=1)))
    assert any("could not release" in r.getMessage() for r in caplog.records)


def test_idempotency_warns_when_a_handler_outlived_its_lease(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        middleware = Idempotency(MemoryIdempotencyStore(), lease=-1)  # expires at once
        started, finish = asyncio.Event(), asyncio.Event()
        runs: list[str] = []

        async def slow(ctx: Context) -> None:
            runs.append("slow")
            started.set()
            await finish.wait()

        async def fast(ctx: Context) -> None:
            runs.append("fast")

        first = make_ctx()
        task = asyncio.create_task(middleware(first, slow))
        await asyncio.wait_for(started.wait(), WAIT)
        await middleware(make_ctx(envelope=first.envelope), fast)
        finish.set()
        await asyncio.wait_for(task, WAIT)
        assert runs == ["slow", "fast"]
        # Done now, whichever run finished first.
        await middleware(make_ctx(envelope=first.envelope), fast)
        assert runs == ["slow", "fast"]

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert sum("outlived its" in r.getMessage() for r in caplog.records) == 1


# -- Timeout -----------------------------------------------------------------------------


def test_timeout_cancels_a_slow_handler_and_names_what_timed_out() -> None:
    cancelled = asyncio.Event()

    async def hangs(ctx: Context) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    ctx = make_ctx()
    with pytest.raises(HandlerTimeoutError) as info:
        asyncio.run(Timeout(0.05)(ctx, hangs))
    assert cancelled.is_set()
    message = str(info.value)
    assert ctx.envelope.id in message and "'orders'" in message and "'billing'" in message
    assert "0.05s" in message


def test_timeout_lets_a_fast_handler_finish() -> None:
    handler = Flaky(failures=0)
    asyncio.run(Timeout(5)(make_ctx(), handler))
    assert handler.attempts == [1]


def test_timeout_lets_the_handlers_own_timeout_error_through() -> None:
    async def own(ctx: Context) -> None:
        raise TimeoutError("the payment API did not answer")

    with pytest.raises(TimeoutError, match="payment API") as info:
        asyncio.run(Timeout(5)(make_ctx(), own))
    assert not isinstance(info.value, HandlerTimeoutError)


def test_timeout_error_is_retried_by_default() -> None:
    assert RetryPolicy().should_retry(HandlerTimeoutError("slow"))


# -- compose and correlation -------------------------------------------------------------


async def call(step: Callable[[Context], Awaitable[None]]) -> None:
    await step(make_ctx())


def test_compose_runs_the_first_middleware_outermost() -> None:
    order: list[str] = []

    def layer(
        name: str,
    ) -> Callable[[Context, Callable[[Context], Awaitable[None]]], Awaitable[None]]:
        async def middleware(ctx: Context, call_next: Callable[[Context], Awaitable[None]]) -> None:
            order.append(f"{name}>")
            await call_next(ctx)
            order.append(f"<{name}")

        return middleware

    async def handler(ctx: Context) -> None:
        order.append("handler")

    asyncio.run(call(compose([layer("a"), layer("b"), layer("c")], handler)))
    assert order == ["a>", "b>", "c>", "handler", "<c", "<b", "<a"]
    order.clear()
    asyncio.run(call(compose([], handler)))
    assert order == ["handler"]


def test_middleware_can_short_circuit() -> None:
    async def stop(ctx: Context, call_next: Callable[[Context], Awaitable[None]]) -> None:
        return None

    handler = Flaky(failures=0)
    asyncio.run(call(compose([stop], handler)))
    assert handler.attempts == []


def test_correlation_makes_the_envelope_current_only_while_handling() -> None:
    seen: list[Envelope | None] = []

    async def handler(ctx: Context) -> None:
        seen.append(current_envelope.get())

    async def scenario() -> None:
        ctx = make_ctx()
        await correlation(ctx, handler)
        assert seen == [ctx.envelope]
        assert current_envelope.get() is None

        async def fails(ctx: Context) -> None:
            raise RuntimeError

        with pytest.raises(RuntimeError):
            await correlation(ctx, fails)
        assert current_envelope.get() is None

    asyncio.run(scenario())


def test_redelivery_requested_has_a_default_reason() -> None:
    assert str(RedeliveryRequested(1.5)) == "redeliver in 1.500s"
    assert str(RedeliveryRequested(1.5, "busy")) == "busy"


# -- dead letters ------------------------------------------------------------------------


async def _read_one(adapter: MemoryAdapter, topic: str) -> Envelope:
    subscription = await adapter.subscribe(
        topic, SubscribeOptions(group="reader", start_from="earliest")
    )
    try:

        async def first() -> Envelope:
            async for delivery in subscription:
                await delivery.ack()
                assert delivery.envelope is not None
                return delivery.envelope
            raise AssertionError("subscription ended")

        return await asyncio.wait_for(first(), WAIT)
    finally:
        await subscription.close()


def test_dead_letter_middleware_publishes_to_the_dlq_and_swallows_the_error() -> None:
    async def scenario() -> None:
        url = f"memory://{uuid.uuid4()}"
        adapter = MemoryAdapter(url)
        ctx = make_ctx(adapter=url)
        ctx.items["attempts"] = 4

        async def fails(ctx: Context) -> None:
            raise KeyError("missing")

        await DeadLetter(adapter)(ctx, fails)
        dead = await _read_one(adapter, "orders.billing.dlq")
        assert dead.id == ctx.envelope.id
        assert dead.extensions["dlqattempts"] == "4"
        assert dead.extensions["dlqreason"] == "KeyError: 'missing'"
        assert dead.extensions["dlqexception"] == "builtins.KeyError"

    asyncio.run(scenario())


def test_dead_letter_middleware_lets_redelivery_and_success_through() -> None:
    async def scenario() -> None:
        url = f"memory://{uuid.uuid4()}"
        adapter = MemoryAdapter(url)

        async def later(ctx: Context) -> None:
            raise RedeliveryRequested(1.0)

        with pytest.raises(RedeliveryRequested):
            await DeadLetter(adapter)(make_ctx(adapter=url), later)
        handler = Flaky(failures=0)
        await DeadLetter(adapter)(make_ctx(adapter=url), handler)
        assert handler.attempts == [1]
        assert "orders.billing.dlq" not in adapter.broker.topics

    asyncio.run(scenario())


def test_dead_letter_middleware_passes_infrastructure_errors_through() -> None:
    async def scenario() -> None:
        url = f"memory://{uuid.uuid4()}"
        adapter = MemoryAdapter(url)

        async def store_down(ctx: Context) -> None:
            raise IdempotencyStoreError("store down")

        with pytest.raises(IdempotencyStoreError):
            await DeadLetter(adapter)(make_ctx(adapter=url), store_down)
        assert "orders.billing.dlq" not in adapter.broker.topics

    asyncio.run(scenario())


def test_dead_letter_middleware_raises_an_infrastructure_error_when_the_dlq_is_down() -> None:
    async def scenario() -> None:
        url = f"memory://{uuid.uuid4()}"
        adapter = MemoryAdapter(url)

        async def fails(ctx: Context) -> None:
            raise KeyError("missing")

        await adapter.faults.refuse_connections(60)  # a broker of this test's own
        with pytest.raises(DeadLetterPublishError) as info:
            await DeadLetter(adapter)(make_ctx(adapter=url), fails)
        assert isinstance(info.value.__cause__, BrokerConnectionError)

    asyncio.run(scenario())


def test_dead_letter_undecodable_wraps_the_raw_bytes() -> None:
    async def scenario() -> None:
        adapter = MemoryAdapter(f"memory://{uuid.uuid4()}")
        delivery = FakeDelivery(
            None, attempt=2, raw=b"\x00garbage", decode_error="not a CloudEvent"
        )
        dead = await dead_letter_undecodable(adapter, delivery)
        assert dead.type == UNDECODABLE_TYPE
        assert dead.data == b"\x00garbage"
        assert dead.datacontenttype == "application/octet-stream"
        assert dead.extensions["dlqreason"] == "undecodable: not a CloudEvent"
        assert dead.extensions["dlqattempts"] == "2"
        assert await _read_one(adapter, "orders.billing.dlq") == dead

    asyncio.run(scenario())
