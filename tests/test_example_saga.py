"""The order saga example runs end to end on the memory broker, with both outcomes,
and every flow carries one correlation id and a causation chain."""

from __future__ import annotations

import asyncio
import itertools
import sys
import uuid
from pathlib import Path

# The examples live beside the package, not in it: make `examples` importable.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from eventbus import Envelope  # noqa: E402
from examples.order_saga.demo import EXPECTED_CHAIN, OrderRequest, SagaRun, default_orders, run_saga  # noqa: E402
from examples.order_saga.events import OrderLine  # noqa: E402


def _run(requests: list[OrderRequest], show_middleware: bool = False) -> tuple[SagaRun, list[str]]:
    lines: list[str] = []
    run = asyncio.run(
        run_saga(
            f"memory://{uuid.uuid4()}",
            requests=requests,
            timeout=5.0,
            echo=lines.append,
            show_middleware=show_middleware,
        )
    )
    return run, lines


def _assert_chain(events: list[Envelope], correlation_id: str, chain_types: list[str]) -> None:
    assert sorted(e.type for e in events) == sorted(chain_types)
    by_type = {e.type: e for e in events}
    assert all(e.correlationid == correlation_id for e in events)
    root = by_type[chain_types[0]]
    assert root.causationid is None
    for cause, effect in itertools.pairwise(chain_types):
        assert by_type[effect].causationid == by_type[cause].id, f"{effect} not caused by {cause}"


def test_paid_and_reserved_order_completes() -> None:
    request = OrderRequest(
        order_id=f"ord-{uuid.uuid4().hex[:6]}",
        customer_id="cust-1",
        lines=(OrderLine(sku="book", quantity=3, unit_price_cents=1000),),
        expected="completed",
    )
    run, printed = _run([request])

    [flow] = run.flows
    assert flow.outcome == "completed"
    assert run.orders.status[request.order_id] == "completed"
    assert run.ledger is not None and run.stock is not None
    assert run.ledger.charges[request.order_id].amount_cents == 3000
    assert not run.ledger.charges[request.order_id].refunded
    assert request.order_id in run.stock.reservations
    chain = [cls.event_type() for cls in EXPECTED_CHAIN["completed"]]
    _assert_chain(flow.events, flow.correlation_id, chain)
    assert len(printed) == len(chain)
    assert all(line.startswith(f"[corr {flow.correlation_id[:8]}]") for line in printed)


def test_out_of_stock_order_is_refunded_and_cancelled() -> None:
    request = OrderRequest(
        order_id=f"ord-{uuid.uuid4().hex[:6]}",
        customer_id="cust-2",
        lines=(
            OrderLine(sku="mug", quantity=2, unit_price_cents=900),
            OrderLine(sku="lamp", quantity=1, unit_price_cents=4500),
        ),
        expected="cancelled",
    )
    run, _ = _run([request])

    [flow] = run.flows
    assert flow.outcome == "cancelled"
    assert run.orders.status[request.order_id] == "cancelled"
    assert run.ledger is not None and run.stock is not None
    assert run.ledger.charges[request.order_id].refunded
    # All or nothing: the mugs that were in stock were not kept back either.
    assert request.order_id not in run.stock.reservations
    assert run.stock.on_hand["mug"] == 500
    _assert_chain(
        flow.events, flow.correlation_id, [cls.event_type() for cls in EXPECTED_CHAIN["cancelled"]]
    )


def test_concurrent_flows_keep_their_own_correlation() -> None:
    run, _ = _run(default_orders())

    assert [flow.outcome for flow in run.flows] == ["completed", "cancelled"]
    first, second = run.flows
    assert first.correlation_id != second.correlation_id
    for flow in run.flows:
        assert flow.outcome is not None
        chain = [cls.event_type() for cls in EXPECTED_CHAIN[flow.outcome]]
        _assert_chain(flow.events, flow.correlation_id, chain)


def test_the_story_shows_a_retry_a_skipped_duplicate_and_a_dead_letter() -> None:
    run, printed = _run(default_orders(), show_middleware=True)

    assert [flow.outcome for flow in run.flows] == ["completed", "cancelled"]
    first = run.flows[0]
    story = "\n".join(printed)
    # The gateway timed out once for the first order, and the retry charged it once.
    assert f"timed out on attempt 1 for order={first.request.order_id}" in story
    assert run.ledger is not None and run.ledger.gateway.attempts[first.request.order_id] == 2
    assert not run.ledger.charges[first.request.order_id].refunded
    # Its OrderPlaced, delivered again, was skipped: still one charge, no new events.
    placed = next(e for e in first.events if e.type == "example.order.placed")
    assert f"duplicate delivery of OrderPlaced (id {placed.id[:8]}) skipped by idempotency" in story
    assert len(first.events) == len(EXPECTED_CHAIN["completed"])
    # The poison message is on the payment service's dead-letter queue, with the reason.
    assert "poison OrderPlaced" in story and "SchemaError: Field required" in story
    assert "orders.payment-service.dlq" in story
    chain = [cls.event_type() for cls in EXPECTED_CHAIN["completed"]]
    _assert_chain(first.events, first.correlation_id, chain)
