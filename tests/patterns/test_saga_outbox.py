"""An orchestrated saga whose store shares the outbox's transaction: a saga change and
the messages it publishes commit together or not at all (SQLite here; the same
check runs on PostgreSQL in integration_tests/patterns/test_saga_postgres.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from eventbus import Event, EventBus
from eventbus.errors import ConfigurationError
from eventbus.patterns.outbox import Outbox, OutboxRelay
from eventbus.patterns.sagas import (
    MemorySagaStore,
    SagaContext,
    SagaDefinition,
    SagaOrchestrator,
    SQLSagaStore,
    Step,
)
from eventbus.patterns.sql import Database


class ReserveStock(
    Event, type="test.saga_outbox.reserve", topic="test-saga-outbox", register=False
):
    order_id: str


async def check_saga_state_and_its_messages_commit_together(url: str) -> None:
    async with await Database.connect(url) as db:
        outbox = Outbox(db, table=f"eventbus_outbox_{uuid.uuid4().hex[:8]}")
        await outbox.setup()
        store = SQLSagaStore(db, unit_of_work=outbox.unit_of_work)
        await store.setup()
        bus = EventBus(f"memory://{uuid.uuid4()}", publish_middleware=[outbox.middleware])
        broken: set[str] = set()

        async def reserve(ctx: SagaContext) -> None:
            await ctx.publish(ReserveStock(order_id=ctx.saga_id), key=ctx.saga_id)

        async def fragile(ctx: SagaContext) -> None:
            await ctx.publish(ReserveStock(order_id=f"{ctx.saga_id}-again"))
            if ctx.saga_id in broken:
                raise RuntimeError("second step failed after publishing")

        orch = SagaOrchestrator(
            SagaDefinition(
                "stock",
                [Step("reserve", reserve, None, timeout=60), Step("confirm", fragile, None)],
            ),
            store,
            bus,
            transactional_publish=True,
        )
        await orch.start("s-1")
        assert await outbox.pending() == 1  # the command waits in the outbox, with the state
        broken.add("s-1")
        state = await orch.step_succeeded("s-1", "reserve")
        # The failing step's publish rolled back with it; the saga compensated instead.
        assert state.status == "compensated" and await outbox.pending() == 1
        await orch.start("s-1")  # a second start of the same id writes nothing
        assert await outbox.pending() == 1
        async with bus, OutboxRelay(outbox, bus) as relay:
            assert await relay.publish_pending() in (0, 1)
        assert await outbox.pending() == 0


@pytest.mark.asyncio
async def test_saga_state_and_messages_commit_together_on_sqlite(tmp_path: Path) -> None:
    await check_saga_state_and_its_messages_commit_together(f"sqlite:///{tmp_path / 's.db'}")


@pytest.mark.asyncio
async def test_transactional_publish_without_an_outbox_is_refused(tmp_path: Path) -> None:
    """transactional_publish=True publishes at once, trusting an outbox to hold the
    message until the saga's change commits; without one the command would leave for
    state that may roll back (issue #19, defect 16). Refused at construction."""

    async def step(ctx: SagaContext) -> None:
        await ctx.publish(ReserveStock(order_id=ctx.saga_id))

    definition = SagaDefinition("refused", [Step("reserve", step, None)])
    async with await Database.connect(f"sqlite:///{tmp_path / 's.db'}") as db:
        outbox = Outbox(db)
        routed = EventBus(f"memory://{uuid.uuid4()}", publish_middleware=[outbox.middleware])
        plain = EventBus(f"memory://{uuid.uuid4()}")
        with pytest.raises(ConfigurationError, match="no outbox"):
            SagaOrchestrator(definition, SQLSagaStore(db), routed, transactional_publish=True)
        with pytest.raises(ConfigurationError, match="no outbox"):
            SagaOrchestrator(definition, MemorySagaStore(), routed, transactional_publish=True)
        with pytest.raises(ConfigurationError, match=r"outbox\.middleware"):
            SagaOrchestrator(
                definition,
                SQLSagaStore(db, unit_of_work=outbox.unit_of_work),
                plain,
                transactional_publish=True,
            )
        SagaOrchestrator(
            definition,
            SQLSagaStore(db, unit_of_work=outbox.unit_of_work),
            routed,
            transactional_publish=True,
        )
        SagaOrchestrator(definition, SQLSagaStore(db), plain)  # the default holds messages
