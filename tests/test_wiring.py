"""Wiring: the runner built from parts (no bus), chain assembly in the middleware package,
the narrow publish interface of Context, publish middleware, one backoff helper, and
undecodable messages under the dead-letter switch."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from eventbus import (
    Command,
    Context,
    Envelope,
    Event,
    MemoryAdapter,
    MemoryIdempotencyStore,
    RetryPolicy,
    registry,
)
from eventbus.backoff import Backoff
from eventbus.middleware import (
    ChainDefaults,
    DeadLetter,
    Idempotency,
    Retry,
    Timeout,
    build_chain,
    correlation,
)
from eventbus.runner import Runner
from eventbus.spec import Handler, SubscriptionSpec
from tests.bus_support import Collector, memory_url, new_topic, run

PACKAGE = Path(__file__).resolve().parent.parent / "eventbus"


class Pinged(Event, type="test.wiring.pinged", topic="test-wiring-pings"):
    n: int


class Ponged(Event, type="test.wiring.ponged", topic="test-wiring-pongs"):
    n: int


class Ring(Command, type="test.wiring.ring", topic="test-wiring-rings"):
    n: int


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_context_runner_and_middleware_do_not_import_the_bus() -> None:
    """The bus <-> context cycle is gone: what runs handlers never needs the bus."""
    modules = [
        PACKAGE / "context.py",
        PACKAGE / "runner.py",
        PACKAGE / "spec.py",
        *(
            PACKAGE / f"{part}.py"
            for part in ("supervision", "lanes", "settlement", "invocation", "batching")
        ),
        *sorted((PACKAGE / "middleware").glob("*.py")),
    ]
    offenders = [m.name for m in modules if "eventbus.bus" in _imports(m)]
    assert offenders == []


def test_the_runner_imports_no_middleware_layer() -> None:
    """What the runner knows of layers, it reads from their declarations."""
    layers = {
        "eventbus.middleware.correlation",
        "eventbus.middleware.deadletter",
        "eventbus.middleware.retry",
        "eventbus.middleware.idempotency",
        "eventbus.middleware.timeout",
        "eventbus.requests",
    }
    offenders = {
        name: sorted(_imports(PACKAGE / name) & layers)
        for name in (
            "runner.py",
            "invocation.py",
            "lanes.py",
            "settlement.py",
            "supervision.py",
            "batching.py",
        )
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_runner_runs_from_its_parts_without_a_bus() -> None:
    async def scenario() -> None:
        url, topic = memory_url(), new_topic()
        adapter = MemoryAdapter(url)
        seen: Collector[tuple[int, str]] = Collector()
        replies: list[tuple[str, Any]] = []

        class Replies:
            async def publish(
                self, message: Any, *, topic: str | None = None, **options: Any
            ) -> Envelope:
                replies.append(("publish", options.get("parent")))
                return Envelope.create(type="x", source="test")

            async def send(self, command: Any, **options: Any) -> Envelope:
                replies.append(("send", options.get("parent")))
                return Envelope.create(type="x", source="test")

        async def handle(event: Pinged, ctx: Context) -> None:
            await ctx.publish(Ponged(n=event.n))
            await ctx.send(Ring(n=event.n))
            seen.add((event.n, ctx.envelope.id))

        spec = SubscriptionSpec(topic=topic, group="g")
        spec.add(Handler.wrap(handle, Pinged))
        chain = build_chain(spec, adapter, ChainDefaults())
        runner = Runner(
            adapter, spec, middleware=chain, registry=registry, publisher=Replies(), prefetch=4
        )
        await runner.start()
        try:
            sent = Envelope.create(type="test.wiring.pinged", source="t", data=b'{"n": 3}')
            await adapter.publish(topic, [sent])
            assert await seen.wait_count(1) == [(3, sent.id)]
        finally:
            await runner.stop(1.0)
        assert [how for how, _ in replies] == ["publish", "send"]
        assert all(parent is not None and parent.id == sent.id for _, parent in replies)

    run(scenario)


def test_chain_is_assembled_by_the_middleware_package_in_the_documented_order() -> None:
    async def custom(ctx: Context, call_next: Any) -> None:
        await call_next(ctx)

    spec = SubscriptionSpec(topic="t", group="g", timeout=1.0, idempotency=MemoryIdempotencyStore())
    chain = build_chain(spec, MemoryAdapter(memory_url()), ChainDefaults(middleware=[custom]))
    kinds = [type(m) if not callable(m) or isinstance(m, type) else m for m in chain]
    assert kinds[:2] == [correlation, custom]
    assert [type(m) for m in chain[2:]] == [DeadLetter, Idempotency, Retry, Timeout]
    off = build_chain(
        SubscriptionSpec(topic="t", group="g"),
        MemoryAdapter(memory_url()),
        ChainDefaults(dead_letter=False),
    )
    assert [type(m) for m in off[1:]] == [Retry]


def test_backoff_grows_caps_and_never_overflows() -> None:
    backoff = Backoff(initial=0.1, multiplier=2.0, max_delay=1.0, jitter=0.0)
    delays = [d for d, _ in zip(backoff, range(6), strict=False)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.delay(5000) == 1.0
    assert Backoff(initial=0.001, max_delay=30.0, jitter=0.0).delay(10**9) == 30.0
    spread = Backoff(initial=1.0, max_delay=1.0, jitter=0.5)
    assert all(0.5 <= spread.delay(3) <= 1.5 for _ in range(50))
    assert (
        RetryPolicy(max_attempts=10**6, initial_delay=0.001, max_delay=0.001, jitter=0.0).delay(
            5000
        )
        == 0.001
    )


def test_a_retry_policy_with_impossible_delays_is_refused_when_built() -> None:
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=2.0)
    with pytest.raises(ValueError, match="initial"):
        RetryPolicy(initial_delay=-1.0)
