"""Middleware: retry policy and retry, idempotency stores, timeout, composition, dead letters."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from eventbus import EventBus, MemoryAdapter, PoisonMessageError, SchemaError
from eventbus.adapter import Delivery, SubscribeOptions
from eventbus.context import Context, current_envelope
from eventbus.envelope import Envelope, parse_time, utcnow
from eventbus.errors import HandlerTimeoutError
from eventbus.middleware import (
    NO_RETRY,
    Claim,
    DeadLetter,
    Idempotency,
    MemoryIdempotencyStore,
    RedeliveryRequested,
    Retry,
    RetryPolicy,
    SQLiteIdempotencyStore,
    Timeout,
    compose,
    correlation,
    dead_letter_envelope,
    dlq_topic,
)
from eventbus.middleware.deadletter import DLQ_EXTENSIONS, UNDECODABLE_TYPE, dead_letter_undecodable

WAIT = 5.0


class FakeDelivery(Delivery):
    """A delivery that records how it was settled."""

    __slots__ = ("calls",)

    def __init__(self, envelope: Envelope | None, attempt: int = 1, **kw: object) -> None:
        super().__init__(topic=kw.pop("topic", "orders"), group=kw.pop("group", "billing"),  # type: ignore[arg-type]
                         envelope=envelope, attempt=attempt, message_id="m-1", **kw)  # type: ignore[arg-type]
        self.calls: list[tuple[str, float]] = []

    async def _ack(self) -> None:
        self.calls.append(("ack", 0.0))

    async def _nack(self, delay: float) -> None:
        self.calls.append(("nack", delay))

    async def _reject(self) -> None:
        self.calls.append(("reject", 0.0))


def make_ctx(attempt: int = 1, envelope: Envelope | None = None,
             adapter: str = "memory://middleware-tests") -> Context:
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
    policy = RetryPolicy(max_attempts=5, in_process_attempts=2, initial_delay=0.001,
                         multiplier=10.0, jitter=0.0)
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
    for exc, policy in ((SchemaError, RetryPolicy()),
                        (ValueError, RetryPolicy(give_up_on=(ValueError,)))):
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


def test_memory_store_claim_complete_release() -> None:
    async def scenario() -> None:
        store = MemoryIdempotencyStore()
        assert await store.claim("a", lease=60) is Claim.CLAIMED
        assert await store.claim("a", lease=60) is Claim.IN_PROGRESS
        await store.release("a")
        assert await store.claim("a", lease=60) is Claim.CLAIMED
        await store.complete("a", ttl=60)
        assert await store.claim("a", lease=60) is Claim.DONE
        assert await store.claim("b", lease=0) is Claim.CLAIMED
        assert await store.claim("b", lease=60) is Claim.CLAIMED  # expired lease is free
        await store.complete("c", ttl=0)
        assert await store.claim("c", lease=60) is Claim.CLAIMED  # forgotten after ttl

    asyncio.run(scenario())


def test_memory_store_forgets_the_oldest_ids_past_max_entries() -> None:
    async def scenario() -> None:
        store = MemoryIdempotencyStore(max_entries=3)
        for key in ("a", "b", "c"):
            assert await store.claim(key, lease=60) is Claim.CLAIMED
            await store.complete(key, ttl=60)
        assert await store.claim("d", lease=60) is Claim.CLAIMED  # "a" is forgotten
        assert await store.claim("a", lease=60) is Claim.CLAIMED
        assert await store.claim("c", lease=60) is Claim.DONE

    asyncio.run(scenario())


def test_sqlite_store_claim_complete_release(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SQLiteIdempotencyStore(str(tmp_path / "idem.db"))
        try:
            assert await store.claim("a", lease=60) is Claim.CLAIMED
            assert await store.claim("a", lease=60) is Claim.IN_PROGRESS
            await store.release("a")
            assert await store.claim("a", lease=60) is Claim.CLAIMED
            await store.complete("a", ttl=60)
            assert await store.claim("a", lease=60) is Claim.DONE
            await store.release("a")  # a done id is never released
            assert await store.claim("a", lease=60) is Claim.DONE
            assert await store.claim("b", lease=-1) is Claim.CLAIMED
            assert await store.claim("b", lease=60) is Claim.CLAIMED  # expired lease
        finally:
            await store.close()
            await store.close()  # closing twice is harmless

    asyncio.run(scenario())


def test_sqlite_store_is_shared_through_the_file(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")

    async def scenario() -> None:
        first, second = SQLiteIdempotencyStore(path), SQLiteIdempotencyStore(path)
        try:
            assert await first.claim("x", lease=60) is Claim.CLAIMED
            assert await second.claim("x", lease=60) is Claim.IN_PROGRESS
            await first.complete("x", ttl=60)
            assert await second.claim("x", lease=60) is Claim.DONE
        finally:
            await first.close()
            await second.close()

    asyncio.run(scenario())


def test_sqlite_concurrent_claims_from_two_stores_claim_each_id_once(tmp_path: Path) -> None:
    path = str(tmp_path / "race.db")
    keys = [f"group:{uuid.uuid4()}" for _ in range(60)]

    async def scenario() -> list[tuple[str, Claim]]:
        stores = [SQLiteIdempotencyStore(path), SQLiteIdempotencyStore(path)]
        try:
            await asyncio.gather(*(s.claim("warmup", 60) for s in stores))
            results = await asyncio.gather(
                *(store.claim(key, 60) for key in keys for store in stores)
            )
            return list(zip([k for k in keys for _ in stores], results, strict=True))
        finally:
            for store in stores:
                await store.close()

    outcomes = asyncio.run(scenario())
    for key in keys:
        claims = [claim for k, claim in outcomes if k == key]
        assert sorted(c.value for c in claims) == ["claimed", "in_progress"], key


def test_sqlite_concurrent_claims_from_two_event_loops_claim_each_id_once(
    tmp_path: Path,
) -> None:
    """Two stores in two threads with their own loops, like two processes on one host."""
    path = str(tmp_path / "threads.db")
    keys = [f"g:{i}" for i in range(80)]
    results: dict[int, list[Claim]] = {}
    start = threading.Barrier(2)

    async def worker(index: int) -> None:
        store = SQLiteIdempotencyStore(path)
        try:
            await store.claim(f"warmup-{index}", 60)
            start.wait(timeout=WAIT)
            results[index] = [await store.claim(key, 60) for key in keys]
        finally:
            await store.close()

    threads = [threading.Thread(target=asyncio.run, args=(worker(i),)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert set(results) == {0, 1}
    for position, key in enumerate(keys):
        pair = sorted(results[i][position].value for i in range(2))
        assert pair == ["claimed", "in_progress"], key


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


def test_timeout_error_is_retried_by_default() -> None:
    assert RetryPolicy().should_retry(HandlerTimeoutError("slow"))


# -- compose and correlation -------------------------------------------------------------


async def call(step: Callable[[Context], Awaitable[None]]) -> None:
    await step(make_ctx())


def test_compose_runs_the_first_middleware_outermost() -> None:
    order: list[str] = []

    def layer(name: str) -> Callable[[Context, Callable[[Context], Awaitable[None]]],
                                     Awaitable[None]]:
        async def middleware(ctx: Context, call_next: Callable[[Context], Awaitable[None]]
                             ) -> None:
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


def test_dlq_topic_name() -> None:
    assert dlq_topic("orders", "billing") == "orders.billing.dlq"


def _raise_and_catch() -> ValueError:
    try:
        raise ValueError("card declined for order A-1")
    except ValueError as exc:
        return exc


def test_dead_letter_envelope_keeps_the_event_and_says_why() -> None:
    original = Envelope.create(type="OrderPlaced", source="orders", data=b'{"id":1}',
                               correlationid="corr-1", partitionkey="k",
                               extensions={"tenant": "acme"})
    exc = _raise_and_catch()
    before = utcnow()
    dead = dead_letter_envelope(original, reason="ValueError: card declined", topic="orders",
                                group="billing", attempts=3, exc=exc)
    for name in ("id", "type", "source", "time", "data", "correlationid", "partitionkey",
                 "dataversion"):
        assert getattr(dead, name) == getattr(original, name), name
    ext = dead.extensions
    assert ext["tenant"] == "acme"
    assert ext["dlqreason"] == "ValueError: card declined"
    assert ext["dlqattempts"] == "3"
    assert ext["dlqtopic"] == "orders" and ext["dlqgroup"] == "billing"
    assert ext["dlqexception"] == "builtins.ValueError"
    assert ext["dlqmessage"] == "card declined for order A-1"
    assert "Traceback" in ext["dlqtraceback"] and "_raise_and_catch" in ext["dlqtraceback"]
    assert before <= parse_time(ext["dlqfailedat"]) <= utcnow()
    assert set(ext) <= {"tenant", *DLQ_EXTENSIONS}


def test_dead_letter_envelope_without_exception_and_when_dead_lettered_again() -> None:
    first = dead_letter_envelope(
        Envelope.create(type="t", source="s"), reason="r1", topic="a", group="g",
        attempts=1, exc=_raise_and_catch(),
    )
    again = dead_letter_envelope(first, reason="r2", topic="b", group="h", attempts=2)
    assert again.extensions["dlqreason"] == "r2" and again.extensions["dlqtopic"] == "b"
    assert "dlqexception" not in again.extensions and "dlqtraceback" not in again.extensions
    assert again.id == first.id


def test_dead_letter_envelope_truncates_long_text() -> None:
    huge = RuntimeError("x" * 5000)
    dead = dead_letter_envelope(Envelope.create(type="t", source="s"), reason="r",
                                topic="a", group="g", attempts=1, exc=huge)
    assert len(dead.extensions["dlqmessage"]) == 1000
    assert len(dead.extensions["dlqtraceback"]) <= 4000


async def _read_one(adapter: MemoryAdapter, topic: str) -> Envelope:
    subscription = await adapter.subscribe(
        topic, SubscribeOptions(group="reader", start_from="earliest"))
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


def test_dead_letter_undecodable_wraps_the_raw_bytes() -> None:
    async def scenario() -> None:
        adapter = MemoryAdapter(f"memory://{uuid.uuid4()}")
        delivery = FakeDelivery(None, attempt=2, raw=b"\x00garbage",
                                decode_error="not a CloudEvent")
        dead = await dead_letter_undecodable(adapter, delivery)
        assert dead.type == UNDECODABLE_TYPE
        assert dead.data == b"\x00garbage"
        assert dead.datacontenttype == "application/octet-stream"
        assert dead.extensions["dlqreason"] == "undecodable: not a CloudEvent"
        assert dead.extensions["dlqattempts"] == "2"
        assert await _read_one(adapter, "orders.billing.dlq") == dead

    asyncio.run(scenario())
