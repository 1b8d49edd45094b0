"""What the chain tests share: one delivery through a fresh runner, fused or
composed, and what it came to (see :func:`outcome`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from eventbus import Command, Context, EventBus, MemoryAdapter, MemoryIdempotencyStore, registry
from eventbus.backoff import Backoff
from eventbus.envelope import Envelope
from eventbus.middleware import ChainDefaults, Middleware, Next, RetryPolicy, build_chain
from eventbus.runner import Runner
from eventbus.spec import Handler, SubscriptionSpec
from tests.bus_support import FakeDelivery, dead_letters, dlq_size, memory_url

POLICY = RetryPolicy(
    max_attempts=3, in_process_attempts=2, initial_delay=0.0, max_delay=0.0, jitter=0.0
)


class Charge(Command, type="test.declarations.charge", topic="test-declarations-charges"):
    n: int


async def passing(ctx: Context, call_next: Next) -> None:
    """Declares nothing: a chain holding it runs composed, one coroutine per layer."""
    await call_next(ctx)


Behaviour = Callable[[int], Awaitable[None]]


async def _succeeds(attempt: int) -> None:
    return None


async def _fails_once(attempt: int) -> None:
    if attempt == 1:
        raise ValueError("first run fails")


async def _always_fails(attempt: int) -> None:
    raise ValueError(f"run {attempt} fails")


async def _cancelled(attempt: int) -> None:
    other = asyncio.create_task(asyncio.sleep(10))
    other.cancel()
    await other  # a CancelledError the handler did not ask for: its failure


BEHAVIOURS: dict[str, Behaviour] = {
    "succeeds": _succeeds,
    "fails once": _fails_once,
    "always fails": _always_fails,
    "cancelled": _cancelled,
}


async def outcome(
    behaviour: Behaviour,
    attempt: int,
    *,
    composed: bool,
    dead_letter: bool,
    envelope: Envelope,
    store: MemoryIdempotencyStore | None = None,
    middleware: tuple[Middleware, ...] = (),
) -> tuple[Any, ...]:
    """What one delivery comes to through a fresh runner on a broker of its own:
    settlements, the attempts the handler saw, and the dead letters (without their
    traceback, whose frames differ, and time); with an idempotency ``store``, the
    chain holds idempotency too, and the bus-wide ``middleware`` (outermost)."""
    url, topic = memory_url(), "test-declarations-charges"
    adapter = MemoryAdapter(url)
    await adapter.connect()
    seen: list[int] = []

    async def handle(event: Charge, ctx: Context) -> None:
        seen.append(ctx.attempt)
        await behaviour(ctx.attempt)

    spec = SubscriptionSpec(topic=topic, group="g")
    spec.add(Handler.wrap(handle, Charge))
    defaults = ChainDefaults(
        middleware=[*middleware, passing] if composed else middleware,
        retry=POLICY,
        dead_letter=dead_letter,
        idempotency=store,
    )
    runner = Runner(
        adapter,
        spec,
        middleware=build_chain(spec, adapter, defaults),
        registry=registry,
        publisher=EventBus(url),
        redelivery_backoff=Backoff(initial=1.0, jitter=0.0),
    )
    assert runner.invocation.fused is not composed  # the two paths under test
    assert runner.invocation.guarded is (store is not None and not composed)
    delivery = FakeDelivery(envelope, attempt, topic=topic, group="g")
    await runner.handle(delivery)
    count = dlq_size(url, topic, "g")
    letters = await dead_letters(url, topic, "g", count) if count else []
    await adapter.close()
    return (
        delivery.calls,
        seen,
        [
            {k: v for k, v in letter.extensions.items() if k not in ("dlqtraceback", "dlqfailedat")}
            for letter in letters
        ],
    )
