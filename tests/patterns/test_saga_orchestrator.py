"""Orchestrated sagas on memory and SQLite; the ``check_*`` bodies run on PostgreSQL too
(integration_tests/patterns/test_saga_postgres.py). ``url=None`` is the memory store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from eventbus import Envelope, Event, EventBus
from eventbus.errors import BrokerConnectionError, MessageTooLargeError
from eventbus.patterns.sagas import (
    MemorySagaStore,
    SagaContext,
    SagaDefinition,
    SagaNotFoundError,
    SagaOrchestrator,
    SagaPublishError,
    SagaStore,
    SQLSagaStore,
    Step,
    StepAction,
)
from eventbus.patterns.sql import Database


class ChargeRequested(Event, type="test.saga.charge_requested", topic="test-saga", register=False):
    order_id: str


class ShipRequested(Event, type="test.saga.ship_requested", topic="test-saga", register=False):
    order_id: str


class SagaDone(Event, type="test.saga.done", topic="test-saga", register=False):
    order_id: str


class RefundRequested(Event, type="test.saga.refund_requested", topic="test-saga", register=False):
    order_id: str


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class World:
    """One saga setup: a store (and its database), a clock, what was published, and
    what the steps and compensations did (a table on SQL, so rollbacks undo it)."""

    def __init__(self, url: str | None, clock: Clock | None = None) -> None:
        self.url = url
        self.clock = clock or Clock()
        self.sent: list[Envelope] = []
        self.effects: list[tuple[str, str]] = []
        self.fail_compensation: dict[str, int] = {}  # step -> failures left
        self.fail_action: set[str] = set()
        self.barrier: asyncio.Barrier | None = None
        self.broker_down = False  # publishing raises, as when the broker is unreachable
        self.db: Database | None = None

    async def __aenter__(self) -> World:
        if self.url is not None:
            self.db = await Database.connect(self.url)
            async with self.db.transaction() as tx:
                await tx.execute(
                    "CREATE TABLE IF NOT EXISTS saga_effects "
                    "(saga_id TEXT NOT NULL, what TEXT NOT NULL)"
                )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.db is not None:
            await self.db.close()

    def store(self, shared: MemorySagaStore | None = None) -> SagaStore:
        if self.db is None:
            return shared or MemorySagaStore()
        return SQLSagaStore(self.db)

    def orchestrator(self, store: SagaStore, attempts: int = 3) -> SagaOrchestrator:
        async def record(topic: str, envelopes: Sequence[Envelope], call_next: object) -> None:
            if self.broker_down:
                raise BrokerConnectionError("broker unreachable (test)")
            self.sent.extend(envelopes)

        bus = EventBus(f"memory://{uuid.uuid4()}", publish_middleware=[record])
        return SagaOrchestrator(
            self.definition(), store, bus, clock=self.clock, compensation_attempts=attempts
        )

    async def effect(self, ctx: SagaContext, what: str) -> None:
        if ctx.tx is not None:
            await ctx.tx.execute(
                "INSERT INTO saga_effects (saga_id, what) VALUES ($1, $2)", ctx.saga_id, what
            )
        else:
            self.effects.append((ctx.saga_id, what))

    async def count(self, saga_id: str, what: str) -> int:
        if self.db is None:
            return self.effects.count((saga_id, what))
        async with self.db.transaction() as tx:
            return int(
                await tx.fetchval(
                    "SELECT count(*) FROM saga_effects WHERE saga_id = $1 AND what = $2",
                    saga_id,
                    what,
                )
            )

    def definition(self) -> SagaDefinition:
        async def reserve_credit(ctx: SagaContext) -> None:
            await self.effect(ctx, "credit reserved")

        async def release_credit(ctx: SagaContext) -> None:
            await self.effect(ctx, "credit released")

        async def charge(ctx: SagaContext) -> None:
            await self.effect(ctx, "charge requested")
            await ctx.publish(ChargeRequested(order_id=ctx.saga_id))

        async def refund(ctx: SagaContext) -> None:
            if ctx.tx is not None:  # written before failing: the rollback must undo it
                await self.effect(ctx, "refunded")
            left = self.fail_compensation.get("charge", 0)
            if left:
                self.fail_compensation["charge"] = left - 1
                raise ConnectionError("payment service unreachable")
            if ctx.tx is None:
                await self.effect(ctx, "refunded")
            await ctx.publish(RefundRequested(order_id=ctx.saga_id))

        async def ship(ctx: SagaContext) -> None:
            if "ship" in self.fail_action:
                raise RuntimeError("no courier")
            if self.barrier is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.barrier.wait(), 0.5)
            await self.effect(ctx, "ship requested")
            await ctx.publish(ShipRequested(order_id=ctx.saga_id))

        async def done(ctx: SagaContext) -> None:
            await ctx.publish(SagaDone(order_id=ctx.saga_id))

        return SagaDefinition(
            "test-order",
            [
                Step("credit", reserve_credit, release_credit),
                Step("charge", charge, refund, timeout=10.0),
                Step("ship", ship, None, timeout=10.0),
            ],
            on_completed=done,
        )

    def types_sent(self) -> list[str]:
        return [e.type.rsplit(".", 1)[-1] for e in self.sent]


# -- cases shared with PostgreSQL ----------------------------------------------------


async def check_success_runs_the_steps_in_order(url: str | None) -> None:
    async with World(url) as w:
        orch = w.orchestrator(w.store())
        await orch.store.setup()
        state = await orch.start("o-1", {"amount": 5})
        assert (state.status, state.step, state.deadline) == ("running", 1, w.clock.now + 10)
        assert w.types_sent() == ["charge_requested"]
        assert w.sent[0].correlationid == "o-1"
        await orch.step_succeeded("o-1", "charge", {"payment_id": "p-1"})
        await orch.step_succeeded("o-1", "charge")  # a duplicate reply is ignored
        state = await orch.step_succeeded("o-1", "ship")
        assert state.status == "completed" and state.data == {"amount": 5, "payment_id": "p-1"}
        assert w.types_sent() == ["charge_requested", "ship_requested", "done"]
        stored = await orch.get("o-1")
        assert stored is not None and stored.status == "completed"


async def check_failure_compensates_in_reverse_order(url: str | None) -> None:
    async with World(url) as w:
        orch = w.orchestrator(w.store())
        await orch.store.setup()
        await orch.start("o-2")
        await orch.step_succeeded("o-2", "charge")
        state = await orch.step_failed("o-2", "ship", "address unknown")
        assert state.status == "compensated" and state.compensated == ["charge", "credit"]
        assert "address unknown" in (state.reason or "")
        await orch.step_failed("o-2", "ship", "again")  # replayed failure: nothing more
        assert await w.count("o-2", "refunded") == 1
        assert await w.count("o-2", "credit released") == 1


async def check_a_failing_action_compensates_what_ran(url: str | None) -> None:
    async with World(url) as w:
        w.fail_action.add("ship")
        orch = w.orchestrator(w.store())
        await orch.store.setup()
        await orch.start("o-3")
        state = await orch.step_succeeded("o-3", "charge")
        assert state.status == "compensated" and state.compensated == ["charge", "credit"]
        assert await w.count("o-3", "ship requested") == 0


async def check_racing_starts_create_one_saga(url: str | None) -> None:
    """Two instances start one id at once: one creates it, the other gets that saga."""
    async with World(url) as w, World(url, w.clock) as w2:
        shared = MemorySagaStore()
        first, second = w.orchestrator(w.store(shared)), w2.orchestrator(w2.store(shared))
        await first.store.setup()
        a, b = await asyncio.gather(
            first.start("o-4", {"by": "a"}), second.start("o-4", {"by": "b"})
        )
        # The same saga (the winner's data); versions may differ by the write that
        # records its messages as sent.
        assert a.saga_id == b.saga_id and a.data == b.data
        assert await w.count("o-4", "credit reserved") == 1
        assert await w.count("o-4", "charge requested") == 1
        assert len(w.sent) + len(w2.sent) == 1


async def check_concurrent_replies_advance_once(url: str | None) -> None:
    """Two instances get the same reply at once: the version check lets one advance."""
    async with World(url) as w, World(url, w.clock) as w2:
        shared = MemorySagaStore()
        first, second = w.orchestrator(w.store(shared)), w2.orchestrator(w2.store(shared))
        await first.store.setup()
        await first.start("o-5")
        # Both load the saga before either saves (on PostgreSQL; elsewhere writers queue).
        w.barrier = w2.barrier = asyncio.Barrier(2)
        await asyncio.gather(
            first.step_succeeded("o-5", "charge"), second.step_succeeded("o-5", "charge")
        )
        assert await w.count("o-5", "ship requested") == 1
        state = await first.get("o-5")
        assert state is not None and state.step == 2


async def check_compensation_applied_once_across_crash_and_replay(url: str | None) -> None:
    async with World(url) as w:
        w.fail_compensation["charge"] = 1
        orch = w.orchestrator(w.store())
        await orch.store.setup()
        await orch.start("o-6")
        await orch.step_succeeded("o-6", "charge")
        state = await orch.step_failed("o-6", "ship", "rejected")
        # The refund raised: its write rolled back, a retry is scheduled.
        assert state.status == "compensating" and state.attempts == 1
        assert state.retry_at is not None and await w.count("o-6", "refunded") == 0
        # "Restart": another orchestrator on the same store picks it up when due.
        w.clock.now = state.retry_at
        other = w.orchestrator(orch.store)
        await asyncio.gather(other.tick(), orch.tick())
        await other.tick()
        await orch.step_failed("o-6", "ship", "replayed")
        final = await other.get("o-6")
        assert final is not None and final.status == "compensated"
        assert await w.count("o-6", "refunded") == 1
        assert await w.count("o-6", "credit released") == 1


async def check_timeout_survives_a_restart(url: str | None) -> None:
    clock = Clock()
    shared = MemorySagaStore()
    async with World(url, clock) as w:
        orch = w.orchestrator(w.store(shared))
        await orch.store.setup()
        await orch.start("o-7")
        clock.now += 9.9
        await orch.tick()
        assert (await orch.get("o-7")).status == "running"  # type: ignore[union-attr]
    # The first orchestrator is gone (its connection closed); a new one starts later.
    clock.now += 5
    async with World(url, clock) as w2:
        fresh = w2.orchestrator(w2.store(shared))
        await fresh.tick()
        state = await fresh.get("o-7")
        assert state is not None and state.status == "compensated"
        assert state.compensated == ["charge", "credit"] and "timed out" in (state.reason or "")
        assert await w2.count("o-7", "refunded") == 1
        await fresh.step_succeeded("o-7", "charge")  # the late reply changes nothing
        assert (await fresh.get("o-7")).status == "compensated"  # type: ignore[union-attr]


async def check_a_compensation_that_keeps_failing_parks_the_saga(
    url: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    async with World(url) as w:
        w.fail_compensation["charge"] = 10**6
        orch = w.orchestrator(w.store(), attempts=3)
        await orch.store.setup()
        await orch.start("o-8")
        await orch.step_failed("o-8", "charge", "declined")  # nothing ran before: no-op
        await orch.start("o-9")
        await orch.step_succeeded("o-9", "charge")
        with caplog.at_level(logging.WARNING, "eventbus.saga"):
            state = await orch.step_failed("o-9", "ship", "lost")
            for _ in range(5):
                w.clock.now += 3600
                await orch.tick()
        state = await orch.get("o-9")  # type: ignore[assignment]
        assert state.status == "parked" and state.attempts == 3
        assert "unreachable" in (state.reason or "")
        assert [s.saga_id for s in await orch.parked()] == ["o-9"]
        assert any(
            r.levelno == logging.ERROR and "parked" in r.getMessage() for r in caplog.records
        )
        assert await w.count("o-9", "credit released") == 0  # never past the stuck step
        w.fail_compensation["charge"] = 0
        state = await orch.resume("o-9")
        assert state.status == "compensated" and await w.count("o-9", "refunded") == 1
        assert (await orch.get("o-8")).status == "compensated"  # type: ignore[union-attr]


async def check_each_orchestrator_drives_only_its_own_saga_type(url: str | None) -> None:
    """Two saga types in one store (one table): each orchestrator's tick, parked list
    and replies touch only sagas of its own type (issue #19, defect 3)."""
    async with World(url) as w:
        ran: list[str] = []

        def undo(what: str) -> StepAction:
            async def compensation(ctx: SagaContext) -> None:
                ran.append(f"{what}({ctx.saga_id})")

            return compensation

        async def noop(ctx: SagaContext) -> None:
            pass

        store = w.store()
        await store.setup()
        bus = EventBus(f"memory://{uuid.uuid4()}")
        orders = SagaOrchestrator(
            SagaDefinition(
                "type-order",
                [
                    Step("reserve", noop, undo("order.release")),
                    Step("charge", noop, undo("order.refund"), timeout=3600),
                ],
            ),
            store,
            bus,
            clock=w.clock,
            compensation_attempts=1,
        )
        shipping = SagaOrchestrator(
            SagaDefinition(
                "type-shipping", [Step("book", noop, undo("shipping.cancel"), timeout=1)]
            ),
            store,
            bus,
            clock=w.clock,
            compensation_attempts=1,
        )
        await shipping.start("ship-1")
        await orders.start("order-1")
        w.clock.now += 10  # the booking's reply is overdue, the charge's is not
        assert await store.overdue(w.clock.now, saga_type="type-order") == []
        assert await store.overdue(w.clock.now, saga_type="type-shipping") == ["ship-1"]
        await orders.tick()
        assert ran == [] and (await shipping.get("ship-1")).status == "running"  # type: ignore[union-attr]
        with pytest.raises(SagaNotFoundError, match="type-shipping"):
            await orders.step_succeeded("ship-1", "charge")
        with pytest.raises(SagaNotFoundError, match="type-shipping"):
            await orders.start("ship-1")
        await shipping.tick()
        assert ran == ["shipping.cancel(ship-1)"]
        assert [
            s.saga_id for s in await store.by_status("compensated", saga_type="type-shipping")
        ] == ["ship-1"]
        assert await store.by_status("compensated", saga_type="type-order") == []
        assert await store.retry_due(w.clock.now, saga_type="type-order") == []
        assert (await orders.get("order-1")).status == "running"  # type: ignore[union-attr]


async def check_a_compensation_is_done_only_once_its_messages_went_out(url: str | None) -> None:
    """A compensation whose publish fails is not recorded as done: its messages stay
    with the saga and go out on the retry, and its effect is not applied twice
    (issue #19, defect 4)."""
    async with World(url) as w:
        orch = w.orchestrator(w.store())
        await orch.store.setup()
        await orch.start("o-10")
        await orch.step_succeeded("o-10", "charge")
        w.broker_down = True
        state = await orch.step_failed("o-10", "ship", "lost")
        assert state.status == "compensating" and state.retry_at is not None
        assert "refund_requested" not in w.types_sent()
        w.clock.now += 3600
        await orch.tick()  # the broker is still down: nothing more happens
        assert (await orch.get("o-10")).status == "compensating"  # type: ignore[union-attr]
        w.broker_down = False
        w.clock.now += 3600
        await orch.tick()
        state = await orch.get("o-10")  # type: ignore[assignment]
        assert state.status == "compensated" and state.compensated == ["charge", "credit"]
        assert w.types_sent().count("refund_requested") == 1
        assert await w.count("o-10", "refunded") == 1
        assert await w.count("o-10", "credit released") == 1


async def check_messages_of_a_committed_change_are_sent_by_tick(url: str | None) -> None:
    """A step's command whose publish failed after its change committed is kept with
    the saga and sent by the next tick (not lost, not sent twice)."""
    async with World(url) as w:
        orch = w.orchestrator(w.store())
        await orch.store.setup()
        w.broker_down = True
        with pytest.raises(SagaPublishError, match="o-11"):
            await orch.start("o-11")
        assert (await orch.get("o-11")).status == "running"  # type: ignore[union-attr]
        w.broker_down = False
        await orch.tick()
        await orch.tick()
        assert w.types_sent() == ["charge_requested"]
        assert w.sent[0].correlationid == "o-11"


CASES = [
    check_success_runs_the_steps_in_order,
    check_failure_compensates_in_reverse_order,
    check_a_failing_action_compensates_what_ran,
    check_racing_starts_create_one_saga,
    check_concurrent_replies_advance_once,
    check_compensation_applied_once_across_crash_and_replay,
    check_timeout_survives_a_restart,
    check_each_orchestrator_drives_only_its_own_saga_type,
    check_a_compensation_is_done_only_once_its_messages_went_out,
    check_messages_of_a_committed_change_are_sent_by_tick,
]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", ["memory", "sqlite"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_saga(case: object, store: str, tmp_path: Path) -> None:
    url = None if store == "memory" else f"sqlite:///{tmp_path / 'sagas.db'}"
    await case(url)  # type: ignore[operator]


@pytest.mark.asyncio
@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_saga_parks_when_compensation_keeps_failing(
    store: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = None if store == "memory" else f"sqlite:///{tmp_path / 'sagas.db'}"
    await check_a_compensation_that_keeps_failing_parks_the_saga(url, caplog)


@pytest.mark.asyncio
async def test_a_failing_on_compensated_hook_is_retried_then_parked() -> None:
    async def step(ctx: SagaContext) -> None:
        pass

    async def broken_hook(ctx: SagaContext) -> None:
        raise RuntimeError("cannot publish OrderCancelled")

    clock = Clock()
    orch = SagaOrchestrator(
        SagaDefinition(
            "hooked",
            [Step("a", step, step), Step("b", step, None, timeout=1)],
            on_compensated=broken_hook,
        ),
        MemorySagaStore(),
        EventBus(f"memory://{uuid.uuid4()}"),
        clock=clock,
        compensation_attempts=2,
    )
    await orch.start("h-1")
    await orch.step_failed("h-1", "b", "no")
    for _ in range(4):
        clock.now += 3600
        await orch.tick()
    state = await orch.get("h-1")
    assert state is not None and state.status == "parked" and state.attempts == 2


@pytest.mark.asyncio
async def test_the_run_loop_times_out_a_step_on_the_real_clock() -> None:
    async def ask(ctx: SagaContext) -> None:
        pass

    undone: list[str] = []

    async def undo(ctx: SagaContext) -> None:
        undone.append(ctx.saga_id)

    orch = SagaOrchestrator(
        SagaDefinition("loop", [Step("ask", ask, undo, timeout=0.05)]),
        MemorySagaStore(),
        EventBus(f"memory://{uuid.uuid4()}"),
    )
    await orch.start("l-1")
    loop = asyncio.create_task(orch.run(interval=0.02))
    try:

        async def compensated() -> None:
            while undone != ["l-1"]:  # noqa: ASYNC110 - the loop task changes it
                await asyncio.sleep(0.01)

        await asyncio.wait_for(compensated(), 5)
    finally:
        loop.cancel()
    assert (await orch.get("l-1")).status == "compensated"  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_a_compensation_message_refused_for_good_parks_the_saga() -> None:
    """A broker outage only delays a compensation; a message the broker will never
    take (too large) parks the saga after the attempts, like a failing compensation."""
    async with World(None) as w:
        orch = w.orchestrator(w.store(), attempts=2)
        await orch.start("o-12")
        await orch.step_succeeded("o-12", "charge")
        real = orch.bus.publish_middleware[0]

        async def refuse(topic: str, envelopes: Sequence[Envelope], call_next: object) -> None:
            if any(e.type.endswith("refund_requested") for e in envelopes):
                raise MessageTooLargeError("refund over the broker's limit (test)")
            await real(topic, envelopes, call_next)  # type: ignore[operator]

        orch.bus.publish_middleware[0] = refuse
        await orch.step_failed("o-12", "ship", "lost")
        for _ in range(3):
            w.clock.now += 3600
            await orch.tick()
        state = await orch.get("o-12")
        assert state is not None and state.status == "parked"
        assert "MessageTooLargeError" in (state.reason or "")
