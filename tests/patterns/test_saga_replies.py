"""An orchestrated saga driven by replies on a bus: commands out, reply events in."""

from __future__ import annotations

import pytest

from eventbus import Context, Event, EventBus
from eventbus.patterns.sagas import (
    MemorySagaStore,
    SagaContext,
    SagaDefinition,
    SagaOrchestrator,
    Step,
)
from eventbus.testing import TestBus


class ChargeCard(Event, type="test.replies.charge_card", topic="test-replies-pay", register=False):
    order_id: str
    cents: int


class CardCharged(
    Event, type="test.replies.card_charged", topic="test-replies-saga", register=False
):
    order_id: str


class CardDeclined(
    Event, type="test.replies.card_declined", topic="test-replies-saga", register=False
):
    order_id: str
    why: str


class Refund(Event, type="test.replies.refund", topic="test-replies-pay", register=False):
    order_id: str


@pytest.mark.asyncio
async def test_replies_on_the_bus_advance_or_compensate_the_saga() -> None:
    saga_bus, payments = EventBus(source="saga"), EventBus(source="payments")
    undone: list[str] = []

    async def hold(ctx: SagaContext) -> None:
        ctx.data["held"] = True

    async def release(ctx: SagaContext) -> None:
        undone.append(ctx.saga_id)

    async def charge(ctx: SagaContext) -> None:
        await ctx.publish(ChargeCard(order_id=ctx.saga_id, cents=ctx.data["cents"]))

    orchestrator = SagaOrchestrator(
        SagaDefinition(
            "pay", [Step("hold", hold, release), Step("charge", charge, None, timeout=30)]
        ),
        MemorySagaStore(),
        saga_bus,
    )
    saga_bus.subscribe(CardCharged, group="saga")(
        orchestrator.reply_handler("charge", saga_id=lambda e: e.order_id)
    )
    saga_bus.subscribe(CardDeclined, group="saga")(
        orchestrator.reply_handler(
            "charge", saga_id=lambda e: e.order_id, succeeded=False, reason=lambda e: e.why
        )
    )

    @payments.subscribe(ChargeCard, group="payments")
    async def pay(event: ChargeCard, ctx: Context) -> None:
        if event.cents > 100:
            await ctx.publish(CardDeclined(order_id=event.order_id, why="limit"))
        else:
            await ctx.publish(CardCharged(order_id=event.order_id))

    async with TestBus(saga_bus, payments) as tb:
        await orchestrator.start("small", {"cents": 50})
        await orchestrator.start("big", {"cents": 500})
        await tb.drain()
    small, big = await orchestrator.get("small"), await orchestrator.get("big")
    assert small is not None and small.status == "completed"
    assert big is not None and big.status == "compensated" and "limit" in (big.reason or "")
    assert undone == ["big"]
    # The command carried the saga's id as correlation, and the reply kept it.
    [command] = [
        e for e in tb.published_envelopes("test-replies-pay") if e.correlationid == "small"
    ]
    assert command.type == "test.replies.charge_card"
