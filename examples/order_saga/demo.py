"""Run the order saga: three services on one broker, one order that completes and
one that is out of stock and gets compensated. On the way the middleware shows
what it does: the payment gateway times out once and the retry succeeds, a
duplicate delivery is skipped by idempotency, a poison message lands on the
dead-letter queue.

::

    python -m examples.order_saga.demo                  # all in this process, memory://
    python -m examples.order_saga.demo --trace          # ... with OpenTelemetry trace ids
    EVENTBUS_URL=kafka://localhost:9092 python -m examples.order_saga.demo --external

Every event of an order's flow is printed as it happens, tagged with the flow's
correlation id (and, with ``--trace``, its trace id: one trace per order); the demo
waits (bounded) for each flow to end, checks the outcome and exits 0, or 1 with the
reason.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if not __package__:  # run as a file: make the `examples` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from eventbus import Envelope, EventBus, MemoryIdempotencyStore, Message, registry
from examples.order_saga import inventory_service, order_service, payment_service, stories
from examples.order_saga.events import (
    InventoryReservationFailed,
    InventoryReserved,
    OrderCancelled,
    OrderCompleted,
    OrderEvent,
    OrderLine,
    OrderPlaced,
    PaymentCharged,
    PaymentRefunded,
)

if TYPE_CHECKING:
    from eventbus.tracing import Tracing

Outcome = Literal["completed", "cancelled"]
Echo = Callable[[str], None]
TOPICS = ("orders", "payments", "inventory")
OUTCOME_OF: dict[str, Outcome] = {
    OrderCompleted.event_type(): "completed",
    OrderCancelled.event_type(): "cancelled",
}
EXPECTED_CHAIN: dict[Outcome, tuple[type[OrderEvent], ...]] = {
    "completed": (OrderPlaced, PaymentCharged, InventoryReserved, OrderCompleted),
    "cancelled": (
        OrderPlaced,
        PaymentCharged,
        InventoryReservationFailed,
        PaymentRefunded,
        OrderCancelled,
    ),
}
"""Each outcome's events in causal order: every one is caused by the one before."""


@dataclass(frozen=True)
class OrderRequest:
    """An order to place and how its saga should end."""

    order_id: str
    customer_id: str
    lines: tuple[OrderLine, ...]
    expected: Outcome


def default_orders() -> list[OrderRequest]:
    """One order that completes and one that is out of stock (fresh ids each run)."""
    run = uuid.uuid4().hex[:6]
    return [
        OrderRequest(
            order_id=f"ord-{run}-1",
            customer_id="cust-ada",
            lines=(OrderLine(sku="book", quantity=2, unit_price_cents=2490),),
            expected="completed",
        ),
        OrderRequest(
            order_id=f"ord-{run}-2",
            customer_id="cust-bob",
            lines=(
                OrderLine(sku="mug", quantity=1, unit_price_cents=900),
                OrderLine(sku="lamp", quantity=1, unit_price_cents=4500),
            ),
            expected="cancelled",
        ),
    ]


@dataclass
class Flow:
    """One order's saga as observed on the broker."""

    request: OrderRequest
    correlation_id: str
    events: list[Envelope] = field(default_factory=list)
    ended: asyncio.Future[Envelope] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def trace_ids(self) -> set[str]:
        """The trace ids its events carry (one, when the buses are traced)."""
        return {e.traceparent[3:35] for e in self.events if e.traceparent is not None}

    @property
    def outcome(self) -> Outcome | None:
        """How the saga ended, or ``None`` while it runs."""
        return OUTCOME_OF[self.ended.result().type] if self.ended.done() else None

    def last_event(self) -> str:
        return _class_name(self.events[-1].type) if self.events else "nothing"


@dataclass
class SagaRun:
    """What :func:`run_saga` observed, plus the services' state when they ran here."""

    flows: list[Flow]
    orders: order_service.Orders
    ledger: payment_service.Ledger | None = None
    stock: inventory_service.Stock | None = None


class SagaTimeoutError(Exception):
    """A flow did not reach OrderCompleted or OrderCancelled in time."""


class FlowMonitor:
    """Watches every saga topic in its own group and files each event under its flow."""

    def __init__(self, flows: dict[str, Flow], echo: Echo, show_trace: bool = False) -> None:
        self.flows = flows
        self.echo = echo
        self.show_trace = show_trace

    async def watch(self, envelope: Envelope) -> None:
        flow = self.flows.get(envelope.correlationid or "")
        if flow is None:
            return  # another run's flow (a real broker keeps history)
        if any(seen.id == envelope.id for seen in flow.events):
            return  # a duplicate delivery (the demo makes one); the flow already has it
        flow.events.append(envelope)
        line = describe(envelope)
        if self.show_trace and envelope.traceparent is not None:
            line = f"[trace {envelope.traceparent[3:11]}] {line}"
        self.echo(line)
        # Ended once its outcome and every event of that outcome's chain arrived: the
        # topics are watched by separate subscriptions, so with the services in other
        # processes the outcome (orders) may arrive before its cause (payments).
        outcome = next((e for e in flow.events if e.type in OUTCOME_OF), None)
        if outcome is not None and not flow.ended.done():
            seen = {e.type for e in flow.events}
            chain = EXPECTED_CHAIN[OUTCOME_OF[outcome.type]]
            if all(cls.event_type() in seen for cls in chain):
                flow.ended.set_result(outcome)


def describe(envelope: Envelope) -> str:
    """One line per event: flow, service, event, its data, its id and its cause's id."""
    message: Message = registry.decode(envelope)
    data: dict[str, Any] = message.model_dump(exclude={"order_id", "lines"})
    details = "".join(f"  {name}={value}" for name, value in data.items())
    order_id = message.order_id if isinstance(message, OrderEvent) else "?"
    cause = (envelope.causationid or "-")[:8]
    return (
        f"[corr {(envelope.correlationid or '?')[:8]}] {envelope.source:<18} "
        f"{_class_name(envelope.type):<27} order={order_id}{details}"
        f"  (id {envelope.id[:8]} <- {cause})"
    )


def _class_name(event_type: str) -> str:
    cls = registry.get(event_type)
    return cls.__name__ if cls is not None else event_type


def _bus(url: str | None, source: str, tracing: Tracing | None = None) -> EventBus:
    # Every service remembers handled event ids so a redelivery is not acted on twice.
    options: dict[str, Any] = {"source": source, "idempotency": MemoryIdempotencyStore()}
    bus = EventBus.from_url(url, **options) if url else EventBus.from_env(**options)
    return tracing.instrument(bus) if tracing is not None else bus


async def run_saga(
    url: str | None = None,
    *,
    requests: Sequence[OrderRequest] | None = None,
    with_services: bool = True,
    timeout: float = 10.0,
    echo: Echo = print,
    show_middleware: bool = True,
    tracing: Tracing | None = None,
) -> SagaRun:
    """Place ``requests`` (default: :func:`default_orders`) and wait for each saga to end.

    ``url`` defaults to ``$EVENTBUS_URL`` (else ``memory://``). With ``with_services``
    the three services run here, each on its own bus; without, they are expected
    to run elsewhere on the same broker (``eventbus run ...``). With
    ``show_middleware`` (and the services here) the first order's payment gateway
    times out once, and once the sagas ended a duplicate and a poison message
    are delivered, each step printed. With ``tracing`` every bus is traced and each
    line shows its trace id. Raises
    :class:`SagaTimeoutError` naming the flows still running after ``timeout`` seconds.
    """
    requests = list(requests) if requests is not None else default_orders()
    # The request id is chosen here and becomes every event's correlation id.
    flows = [Flow(request, correlation_id=str(uuid.uuid4())) for request in requests]
    monitor = FlowMonitor(
        {flow.correlation_id: flow for flow in flows}, echo, show_trace=tracing is not None
    )
    monitor_bus = _bus(url, "saga-demo", tracing)
    # A fresh group reading from the earliest: it sees the whole flow, whatever the timing.
    monitor_bus.subscribe(
        *TOPICS, group=f"saga-monitor-{uuid.uuid4().hex[:8]}", start_from="earliest"
    )(monitor.watch)

    order_bus = _bus(url, order_service.SERVICE, tracing)
    run = SagaRun(flows=flows, orders=order_service.Orders())
    buses = [monitor_bus, order_bus]
    if with_services:
        order_service.register(order_bus, run.orders)
        payment_bus = _bus(url, payment_service.SERVICE, tracing)
        run.ledger = payment_service.register(payment_bus)
        if show_middleware and run.flows:
            run.ledger.gateway.flaky.add(run.flows[0].request.order_id)
            run.ledger.gateway.echo = echo
        inventory_bus = _bus(url, inventory_service.SERVICE, tracing)
        run.stock = inventory_service.register(inventory_bus)
        buses += [payment_bus, inventory_bus]

    show_middleware = show_middleware and with_services
    with ExitStack() as logs:
        watch = logs.enter_context(stories.LogWatch())
        show = (watch, echo) if show_middleware and run.flows else None
        await _run_flows(run, buses, order_bus, timeout, with_services, show)
    return run


async def _run_flows(
    run: SagaRun,
    buses: list[EventBus],
    order_bus: EventBus,
    timeout: float,
    with_services: bool,
    show: tuple[stories.LogWatch, Echo] | None,
) -> None:
    async with AsyncExitStack() as stack:
        for bus in buses:
            await stack.enter_async_context(bus)
        for flow in run.flows:
            await run.orders.place(
                order_bus,
                order_id=flow.request.order_id,
                customer_id=flow.request.customer_id,
                lines=flow.request.lines,
                request_id=flow.correlation_id,
            )
        _, pending = await asyncio.wait([flow.ended for flow in run.flows], timeout=timeout)
        if pending:
            stuck = [flow for flow in run.flows if not flow.ended.done()]
            raise SagaTimeoutError(
                f"{len(stuck)} saga(s) did not end within {timeout:.1f}s: "
                + "; ".join(
                    f"order {f.request.order_id} (corr {f.correlation_id[:8]}) stopped after "
                    f"{f.last_event()}"
                    for f in stuck
                )
                + ("" if with_services else " — are the three services running on this broker?")
            )
        if show is not None:
            # After the sagas: the first order's OrderPlaced delivered again, and a poison one.
            watch, echo = show
            placed = next(e for e in run.flows[0].events if e.type == OrderPlaced.event_type())
            echo("")
            await stories.duplicate_skipped(watch, order_bus, placed, echo, timeout)
            await stories.poison_dead_lettered(watch, order_bus, echo, timeout)


def problems(flow: Flow) -> list[str]:
    """What is wrong with a finished flow: outcome, events, correlation, causation."""
    found: list[str] = []
    order = flow.request.order_id
    if flow.outcome != flow.request.expected:
        found.append(f"order {order}: expected {flow.request.expected}, got {flow.outcome}")
        return found
    by_type = {envelope.type: envelope for envelope in flow.events}
    chain = EXPECTED_CHAIN[flow.request.expected]
    missing = [cls.__name__ for cls in chain if cls.event_type() not in by_type]
    if missing:
        found.append(f"order {order}: never saw {', '.join(missing)}")
        return found
    for envelope in flow.events:
        if envelope.correlationid != flow.correlation_id:
            found.append(f"order {order}: {_class_name(envelope.type)} has another correlation")
    for cause, effect in itertools.pairwise(chain):
        if by_type[effect.event_type()].causationid != by_type[cause.event_type()].id:
            found.append(f"order {order}: {effect.__name__} is not caused by {cause.__name__}")
    if len(flow.trace_ids) > 1:
        found.append(f"order {order}: its events are in {len(flow.trace_ids)} traces, not one")
    return found


def _tracing() -> tuple[Tracing, Callable[[str], int]]:
    """Tracing to an in-memory exporter, and how many spans a trace id (hex) has."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        from eventbus.tracing import Tracing
    except ModuleNotFoundError as missing:
        raise SystemExit(
            f"error: --trace needs the OpenTelemetry SDK ({missing.name} is missing): "
            'pip install "eventbus[otel]" opentelemetry-sdk'
        ) from None
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def spans_in(trace_id: str) -> int:
        wanted = int(trace_id, 16)
        return sum(
            1
            for span in exporter.get_finished_spans()
            if span.context is not None and span.context.trace_id == wanted
        )

    return Tracing(provider), spans_in


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry: run the saga, check it, exit 0 or 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per run")
    parser.add_argument(
        "--external",
        action="store_true",
        help="the services run as separate processes (eventbus run ...); only place orders",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="trace every bus with OpenTelemetry (needs its SDK) and print the trace ids",
    )
    args = parser.parse_args(argv)
    tracing, spans_in = _tracing() if args.trace else (None, None)
    try:
        run = asyncio.run(
            run_saga(with_services=not args.external, timeout=args.timeout, tracing=tracing)
        )
    except SagaTimeoutError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    found = [problem for flow in run.flows for problem in problems(flow)]
    if found:
        for problem in found:
            print(f"FAILED: {problem}", file=sys.stderr)
        return 1
    print()
    for flow in run.flows:
        print(
            f"order {flow.request.order_id}: {flow.outcome} as expected "
            f"({len(flow.events)} events, corr {flow.correlation_id[:8]})"
        )
        if spans_in is not None:
            for trace_id in sorted(flow.trace_ids):
                print(f"    trace {trace_id}: {spans_in(trace_id)} spans")
    return 0


if __name__ == "__main__":
    sys.exit(main())
