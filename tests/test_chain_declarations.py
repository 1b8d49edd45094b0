"""The chain's order is decided in one place, and the runner reads only what layers
declare about themselves: the fused path (handler called directly, ``recover`` on a
failure) gives exactly what the composed chain gives."""

from __future__ import annotations

import uuid
from typing import ClassVar

import pytest

from eventbus import Context, Event, EventBus, MemoryAdapter, MemoryIdempotencyStore, registry
from eventbus.envelope import Envelope
from eventbus.middleware import (
    ChainDefaults,
    DeadLetter,
    Idempotency,
    Middleware,
    Next,
    RedeliveryRequested,
    Retry,
    build_chain,
    correlation,
)
from eventbus.requests import ReplyStep, reply_step, with_replies
from eventbus.runner import Runner
from eventbus.spec import Handler, SubscriptionSpec
from tests.bus_support import Collector, FakeDelivery, memory_url, run, until
from tests.chain_support import BEHAVIOURS, POLICY, Charge, outcome


class Charged(Event, type="test.declarations.charged", topic="test-declarations-charged"):
    n: int


@pytest.mark.parametrize("name", list(BEHAVIOURS))
@pytest.mark.parametrize("attempt", [1, 3, 4])
@pytest.mark.parametrize("dead_letter", [True, False])
def test_the_fused_path_settles_and_dead_letters_as_the_composed_chain(
    name: str, attempt: int, dead_letter: bool
) -> None:
    # attempt 3 is the last of max_attempts=3; attempt 4 came back after 3 runs that
    # never finished (the retry layer refuses it before it runs).
    async def scenario() -> None:
        envelope = Envelope.create(type=Charge.event_type(), source="t", data=b'{"n": 1}')
        outcomes = [
            await outcome(
                BEHAVIOURS[name],
                attempt,
                composed=composed,
                dead_letter=dead_letter,
                envelope=envelope,
            )
            for composed in (False, True)
        ]
        assert outcomes[0] == outcomes[1]

    run(scenario)


def test_the_fused_path_dead_letters_poison_as_the_composed_chain() -> None:
    async def scenario() -> None:
        envelope = Envelope.create(
            type=Charge.event_type(), source="t", data=b'{"n": "not a number"}'
        )
        outcomes = [
            await outcome(
                BEHAVIOURS["succeeds"], 1, composed=composed, dead_letter=True, envelope=envelope
            )
            for composed in (False, True)
        ]
        assert outcomes[0] == outcomes[1]
        calls, seen, _ = outcomes[0]
        assert calls == [("ack", 0.0)] and seen == []  # never ran: dead-lettered at once

    run(scenario)


class Alarm:
    """A user's layer that acts only on failure, and says so."""

    acts_only_on_failure: ClassVar[bool] = True

    def __init__(self) -> None:
        self.entered = 0
        self.failures: list[BaseException] = []

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        self.entered += 1
        try:
            await call_next(ctx)
        except Exception as exc:
            await self.recover(ctx, call_next, exc)

    async def recover(self, ctx: Context, call_next: Next, exc: Exception) -> None:
        self.failures.append(exc)
        raise exc


def test_a_layer_declaring_it_acts_only_on_failure_costs_nothing_until_a_failure() -> None:
    async def scenario() -> None:
        alarm = Alarm()
        bus = EventBus(memory_url(), middleware=[alarm], retry=POLICY)
        handled: Collector[int] = Collector()

        @bus.subscribe(Charged, group="g")
        async def handle(event: Charged, ctx: Context) -> None:
            handled.add(event.n)
            if event.n == 2:
                raise ValueError("declined")

        async with bus:
            await bus.publish(Charged(n=1))
            await handled.wait_count(1)
            assert alarm.entered == 0  # the success path skipped it
            await bus.publish(Charged(n=2))
            await handled.wait_count(3)  # two in-process runs, then a redelivery
            await until(lambda: bool(alarm.failures))
        # Retry asked for a redelivery and dead-letter passed it on: the alarm saw it.
        assert isinstance(alarm.failures[0], RedeliveryRequested)
        assert alarm.entered == 0

    run(scenario)


class CountingRetry(Retry):
    """Overrides ``__call__`` (it acts on success too) without declaring again."""

    calls: ClassVar[list[str]] = []

    async def __call__(self, ctx: Context, call_next: Next) -> None:
        CountingRetry.calls.append(ctx.envelope.id)
        await super().__call__(ctx, call_next)


def test_a_subclass_acting_on_success_is_called_on_success() -> None:
    async def scenario() -> None:
        url, topic = memory_url(), f"t-{uuid.uuid4().hex}"
        adapter = MemoryAdapter(url)
        await adapter.connect()

        async def handle(event: Charge) -> None:
            return None

        spec = SubscriptionSpec(topic=topic, group="g")
        spec.add(Handler.wrap(handle, Charge))
        chain: list[Middleware] = [correlation, DeadLetter(adapter), CountingRetry(POLICY)]
        runner = Runner(adapter, spec, middleware=chain, registry=registry, publisher=EventBus(url))
        assert not runner.invocation.fused
        envelope = Envelope.create(type=Charge.event_type(), source="t", data=b'{"n": 1}')
        await runner.handle(FakeDelivery(envelope, 1, topic=topic, group="g"))
        assert CountingRetry.calls == [envelope.id]
        await adapter.close()

    run(scenario)


def test_build_chain_places_the_reply_step_inside_dead_letter_outside_idempotency() -> None:
    bus = EventBus(memory_url())

    @bus.subscribe(Charge, group="g", idempotency=MemoryIdempotencyStore())
    async def handle(command: Charge) -> None: ...

    spec = bus.subscriptions[0]
    adapter = MemoryAdapter(memory_url())
    chain = build_chain(spec, adapter, ChainDefaults(replies=lambda spec: reply_step(spec, bus)))
    assert chain[0] is correlation
    assert [type(layer) for layer in chain[1:]] == [DeadLetter, ReplyStep, Idempotency, Retry]
    assert bus.chain_for(spec)[1:] == chain[1:] or [
        type(layer) for layer in bus.chain_for(spec)[1:]
    ] == [type(layer) for layer in chain[1:]]
    without = build_chain(
        spec, adapter, ChainDefaults(dead_letter=False, replies=lambda spec: reply_step(spec, bus))
    )
    assert [type(layer) for layer in without[1:]] == [ReplyStep, Idempotency, Retry]


def test_with_replies_still_works_and_warns_naming_build_chain() -> None:
    bus = EventBus(memory_url())

    @bus.subscribe(Charge, group="g")
    async def handle(command: Charge) -> None: ...

    spec = bus.subscriptions[0]
    chain = build_chain(spec, MemoryAdapter(memory_url()), ChainDefaults())
    with pytest.warns(DeprecationWarning, match="build_chain"):
        replied = with_replies(chain, spec, bus)
    assert [type(layer) for layer in replied[1:]] == [DeadLetter, ReplyStep, Retry]
