"""PublishObserver: a publish layer that only watches. Outermost, the bus calls its
``before``/``after`` itself; anywhere else its ``__call__`` does the same. Either way
it sees every publish once, in order around the layers inside it, with the failure
they raised; and tracing's producer step goes in after the observers leading the list.
PassingPublishLayer: a last layer the bus does not call for a publish it would only
hand on."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from eventbus import Envelope, Event, EventBus, MessageTooLargeError, PublishError
from eventbus.middleware.base import PassingPublishLayer, PublishObserver, leading_publish_observers
from tests.bus_support import Collector, memory_url, run


class Pinged(Event, type="test.publish-observer.pinged", topic="test-publish-observer"):
    n: int


class Watch(PublishObserver):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def before(self, topic: str, envelopes: Sequence[Envelope]) -> object:
        self.calls.append(f"{self.name} before {len(envelopes)}")
        return f"mark-{self.name}"

    def after(self, topic: str, envelopes: Sequence[Envelope], mark: object, failure: Any) -> None:
        ended = "ok" if failure is None else type(failure).__name__
        self.calls.append(f"{self.name} after {mark} {ended}")


def layer(name: str, calls: list[str], fail: bool = False) -> Any:
    async def step(topic: str, envelopes: Sequence[Envelope], call_next: Any) -> None:
        calls.append(f"{name} in")
        if fail:
            raise PublishError(f"{name} refused")
        await call_next(topic, envelopes)
        calls.append(f"{name} out")

    return step


@pytest.mark.parametrize("inner", [0, 1, 2])
def test_an_outermost_observer_sees_each_publish_around_the_layers_inside(inner: int) -> None:
    async def scenario() -> None:
        calls: list[str] = []
        layers = [layer(f"l{i}", calls) for i in range(inner)]
        bus = EventBus(memory_url(), publish_middleware=[Watch("w", calls), *layers])
        async with bus:
            await bus.publish(Pinged(n=1))
            await bus.publish_many([Pinged(n=2), Pinged(n=3)])
        one = [f"l{i} in" for i in range(inner)] + [f"l{i} out" for i in reversed(range(inner))]
        assert calls == [
            "w before 1",
            *one,
            "w after mark-w ok",
            "w before 2",
            *one,
            "w after mark-w ok",
        ]

    run(scenario)


def test_an_observer_inside_another_layer_runs_through_its_call() -> None:
    async def scenario() -> None:
        calls: list[str] = []
        bus = EventBus(
            memory_url(),
            publish_middleware=[layer("outer", calls), Watch("w", calls), layer("inner", calls)],
        )
        async with bus:
            await bus.publish(Pinged(n=1))
        assert calls == [
            "outer in",
            "w before 1",
            "inner in",
            "inner out",
            "w after mark-w ok",
            "outer out",
        ]

    run(scenario)


@pytest.mark.parametrize("outermost", [True, False])
def test_an_observer_sees_what_the_layers_inside_raised_and_the_publish_fails(
    outermost: bool,
) -> None:
    async def scenario() -> None:
        calls: list[str] = []
        watch = Watch("w", calls)
        refuse = layer("refuse", calls, fail=True)
        layers = [watch, refuse] if outermost else [layer("outer", calls), watch, refuse]
        bus = EventBus(memory_url(), publish_middleware=layers)
        async with bus:
            with pytest.raises(PublishError, match="refuse refused"):
                await bus.publish(Pinged(n=1))
        assert calls[-2:] == ["refuse in", "w after mark-w PublishError"]

    run(scenario)


def test_an_observer_alone_sees_the_broker_refuse_and_the_publish_fails() -> None:
    """No layer inside it: the bus calls the broker between before and after (its
    shortest path), and a publish the broker refuses is still seen as failed."""

    async def scenario() -> None:
        calls: list[str] = []
        url = memory_url()
        bus = EventBus(f"{url}?max_message_bytes=300", publish_middleware=[Watch("w", calls)])
        async with bus:
            await bus.publish(Pinged(n=1))
            with pytest.raises(MessageTooLargeError):
                await bus.publish(Pinged(n=10**400))  # over the 300 bytes
        assert calls == [
            "w before 1",
            "w after mark-w ok",
            "w before 1",
            "w after mark-w MessageTooLargeError",
        ]

    run(scenario)


def test_tracing_goes_in_after_the_observers_leading_the_publish_layers() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import CollectorRegistry

    from eventbus.metrics import Metrics, Published
    from eventbus.tracing import SendSpans, Tracing

    for order in ("metrics first", "tracing first"):
        bus = EventBus(memory_url(), publish_middleware=[layer("user", [])])
        metrics, tracing = Metrics(registry=CollectorRegistry()), Tracing(TracerProvider())
        if order == "metrics first":
            tracing.instrument(metrics.instrument(bus))
        else:
            metrics.instrument(tracing.instrument(bus))
        kinds = [type(step) for step in bus.publish_middleware]
        assert kinds[:2] == [Published, SendSpans], order
        assert leading_publish_observers(bus.publish_middleware) == 1


def test_a_tracing_that_never_records_installs_nothing() -> None:
    from opentelemetry.trace import NoOpTracerProvider

    from eventbus.tracing import Tracing

    bus = EventBus(memory_url())
    chain, publishing = list(bus.middleware), list(bus.publish_middleware)
    assert Tracing(NoOpTracerProvider()).instrument(bus) is bus
    assert (bus.middleware, bus.publish_middleware, bus.trace_root) == (chain, publishing, None)


class Passing(PassingPublishLayer):
    """A layer that passes the publishes whose first event's ``n`` is even."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def passes(self, topic: str, envelopes: Sequence[Envelope]) -> bool:
        self.calls.append(f"asked {len(envelopes)}")
        return Pinged.model_validate_json(envelopes[0].data).n % 2 == 0

    async def __call__(self, topic: str, envelopes: Sequence[Envelope], call_next: Any) -> None:
        self.calls.append("passing in")
        await call_next(topic, envelopes)


@pytest.mark.parametrize("before", ["nothing", "an observer", "a layer", "two observers"])
def test_a_layer_that_passes_a_publish_is_not_called_for_it(before: str) -> None:
    """Last, behind nothing but observers, a layer that says it would only hand a
    publish on is not called for it (the envelopes still reach the broker); behind
    a layer that may change the publish (or the context it is asked in), it is called
    as any layer, without being asked."""

    async def scenario() -> None:
        calls: list[str] = []
        leading = {
            "nothing": [],
            "an observer": [Watch("w", calls)],
            "a layer": [layer("l", calls)],
            "two observers": [Watch("w", calls), Watch("v", calls)],
        }[before]
        url = memory_url()
        bus = EventBus(url, publish_middleware=[*leading, Passing(calls)])
        got = Collector[int]()

        @bus.subscribe(Pinged, group="g")
        async def handle(event: Pinged) -> None:
            got.add(event.n)

        async with bus:
            await bus.publish(Pinged(n=2))  # passed
            await bus.publish_many([Pinged(n=1), Pinged(n=4)])  # not passed
            await got.wait_count(3)
        asked = before in ("nothing", "an observer")  # the shapes the bus shortens
        watched = {"an observer": ["w"], "two observers": ["w", "v"]}.get(before, [])
        expected = [
            *(["asked 1"] if asked else []),  # as the publish starts: observers change nothing
            *(f"{w} before 1" for w in watched),
            *(["l in"] if before == "a layer" else []),
            *([] if asked else ["passing in"]),
            *(["l out"] if before == "a layer" else []),
            *(f"{w} after mark-{w} ok" for w in reversed(watched)),
            *(["asked 2"] if asked else []),
            *(f"{w} before 2" for w in watched),
            *(["l in"] if before == "a layer" else []),
            "passing in",
            *(["l out"] if before == "a layer" else []),
            *(f"{w} after mark-{w} ok" for w in reversed(watched)),
        ]
        assert calls == expected
        assert sorted(got.items) == [1, 2, 4]

    run(scenario)
