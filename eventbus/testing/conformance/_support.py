"""Shared machinery of the conformance cases: the case decorator, the per-case
resources (:class:`Case`), and recording what handlers see (the suite's events are in
:mod:`~eventbus.testing.conformance._events`, waiting in :mod:`eventbus.testing.collector`).

Every case is a plain synchronous pytest test that runs its async body with
``asyncio.run`` under an overall timeout, so the suite needs no async plugin and
each case gets a fresh event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from eventbus.adapter import Adapter, Capabilities, Delivery, SubscribeOptions, Subscription
from eventbus.bus import EventBus
from eventbus.context import Context
from eventbus.deadletters import dlq_topic
from eventbus.envelope import Envelope
from eventbus.events import Message
from eventbus.middleware.base import Observer, RedeliveryRequested
from eventbus.middleware.retry import RetryPolicy
from eventbus.testing.collector import DEFAULT_WAIT, PATIENCE, Collector
from eventbus.testing.conformance._events import Ping, on_topic
from eventbus.testing.target import BrokerTarget

log = logging.getLogger("eventbus.testing")
T = TypeVar("T")
M = TypeVar("M", bound=Message)
S = TypeVar("S")

CaseBody = Callable[[S, "Case"], Coroutine[Any, Any, None]]
CaseTest = Callable[[S, BrokerTarget], None]

# Small delays everywhere so retries and redeliveries finish quickly in tests.
FAST_RETRY = RetryPolicy(
    max_attempts=3, in_process_attempts=1, initial_delay=0.02, max_delay=0.2, jitter=0.0
)
WAIT = DEFAULT_WAIT
"""Default seconds to wait for something that should happen."""
QUIET = 0.3
"""Seconds to watch for something that must NOT happen (bounded, documented per case)."""


# -- recording -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """One run of the chain, as recorded by :class:`Recorder`."""

    id: str
    type: str
    attempt: int
    outcome: str


class Recorder(Observer):
    """Bus-wide middleware that records every delivery entering the chain and how it left.

    It sits outside dead-letter, idempotency and retry, so it sees duplicates that
    are skipped and messages that are dead-lettered (outcome ``"ok"``: settled by ack)
    as well as redelivery requests (outcome ``"redeliver"``). It only watches (an
    :class:`~eventbus.middleware.base.Observer`), so the chain it watches runs as a
    service's does: fused, idempotency over the memory store included.
    """

    def __init__(self) -> None:
        self.seen: Collector[Seen] = Collector("recorder")

    def end(self, ctx: Context, mark: object, failure: BaseException | None) -> None:
        if failure is None:
            outcome = "ok"
        else:
            outcome = "redeliver" if isinstance(failure, RedeliveryRequested) else "error"
        self.seen.add(Seen(ctx.envelope.id, ctx.envelope.type, ctx.delivery.attempt, outcome))

    def settled(self, event_id: str) -> int:
        """How many deliveries of ``event_id`` left the chain to be acked."""
        return sum(1 for s in self.seen.items if s.id == event_id and s.outcome == "ok")


class SubscriptionPump:
    """Pumps an adapter subscription into an inbox, for adapter-level cases."""

    def __init__(self, subscription: Subscription, name: str = "deliveries") -> None:
        self.subscription = subscription
        self.inbox: Collector[Delivery] = Collector(name)
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for delivery in self.subscription:
            self.inbox.add(delivery)

    async def close(self) -> None:
        await self.subscription.close()
        try:
            await asyncio.wait_for(asyncio.shield(self.task), 5.0)
        except TimeoutError:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


# -- per-case resources ------------------------------------------------------------------


class Case:
    """What a case body works with: the target, its capabilities, and factories for
    buses, adapters and unique names, all closed when the case ends."""

    def __init__(self, target: BrokerTarget, capabilities: Capabilities, name: str) -> None:
        self.target = target
        self.caps = capabilities
        self.name = name
        self.run_id = uuid.uuid4().hex[:8]
        self._buses: list[EventBus] = []
        self._adapters: list[Adapter] = []
        self._collectors: list[SubscriptionPump] = []
        self._counter = 0

    def unique(self, kind: str) -> str:
        """A short name no other case or run uses, of letters, digits and hyphens only,
        so every broker accepts it as a topic, queue, stream or group name."""
        self._counter += 1
        short = self.name.removeprefix("test_")[:16].replace("_", "-").strip("-")
        return f"cf-{short}-{kind}{self._counter}-{self.run_id}"

    def topic(self) -> str:
        return self.unique("t")

    def group(self) -> str:
        return self.unique("g")

    def count(self, n: int, minimum: int = 5) -> int:
        return self.target.count(n, minimum)

    def bus(self, url: str | None = None, **options: Any) -> EventBus:
        """A bus on the target (or ``url``) with fast retries; stopped at the end."""
        options.setdefault("source", self.unique("svc"))
        options.setdefault("retry", FAST_RETRY)
        options.setdefault("shutdown_timeout", 5.0)
        options.setdefault("publish_timeout", 20.0)
        bus = EventBus(self.target.make_adapter(url), **options)
        self._buses.append(bus)
        return bus

    async def consumer(
        self,
        subject: str | type[Message],
        handler: Callable[..., Awaitable[None]],
        *,
        bus: EventBus | None = None,
        **subscribe: Any,
    ) -> EventBus:
        """``bus`` (by default a new one from :meth:`bus`), started with ``handler``
        subscribed to ``subject`` (a topic or an event class); ``subscribe`` are the
        subscription's options, ``group=`` among them."""
        bus = bus or self.bus()
        bus.subscribe(subject, **subscribe)(handler)
        await bus.start()
        return bus

    async def publisher(self, url: str | None = None, **options: Any) -> EventBus:
        """A started bus with no subscriptions, for publishing."""
        bus = self.bus(url, **options)
        await bus.start()
        return bus

    def adapter(self, url: str | None = None) -> Adapter:
        """A fresh, unconnected adapter on the target; closed at the end."""
        adapter = self.target.make_adapter(url)
        self._adapters.append(adapter)
        return adapter

    async def connected_adapter(self, url: str | None = None) -> Adapter:
        adapter = self.adapter(url)
        await adapter.connect()
        return adapter

    async def collect(
        self, adapter: Adapter, topic: str, group: str, **options: Any
    ) -> SubscriptionPump:
        """Subscribe ``adapter`` to ``topic`` as ``group`` and collect deliveries."""
        subscription = await adapter.subscribe(topic, SubscribeOptions(group=group, **options))
        collector = SubscriptionPump(subscription, f"{topic}/{group}")
        self._collectors.append(collector)
        return collector

    async def dead_letters(self, topic: str, group: str) -> Collector[Envelope]:
        """Start listening on the DLQ of ``topic``/``group``; returns what lands there."""
        inbox: Collector[Envelope] = Collector(f"DLQ {dlq_topic(topic, group)}")
        listener = self.bus(dead_letter=False)

        @listener.subscribe(dlq_topic(topic, group), group=self.group())
        async def keep(envelope: Envelope) -> None:
            inbox.add(envelope)

        await listener.start()
        return inbox

    async def watched_ping(self) -> tuple[type[Ping], str, str, Collector[Envelope]]:
        """A :class:`Ping` class on a topic of its own, that topic, a new group, and what
        lands in the dead-letter queue of that topic and group (already listening)."""
        event_cls = on_topic(Ping, self.topic())
        topic, group = event_cls.default_topic(), self.group()
        return event_cls, topic, group, await self.dead_letters(topic, group)

    async def aclose(self) -> None:
        errors: list[BaseException] = []
        # A fault still in force (the case failed, or ended, inside its window) ends
        # first: closing then finds the broker, and the next case starts on a working path.
        heal = getattr(self.target.faults, "heal", None)
        if heal is not None:
            await _quietly(heal(), errors)
        for collector in self._collectors:
            await _quietly(collector.close(), errors)
        for bus in self._buses:
            await _quietly(bus.stop(timeout=2.0), errors)
        for adapter in self._adapters:
            await _quietly(adapter.close(), errors)
        if errors:
            raise errors[0]


async def _quietly(step: Awaitable[None], errors: list[BaseException]) -> None:
    try:
        await asyncio.wait_for(step, 10.0)
    except Exception as exc:
        errors.append(exc)


# -- the case decorator --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Requirement:
    """Something a target must offer for a case to run: a name for the skip message
    and a predicate over the target and its adapter's capabilities."""

    name: str
    holds: Callable[[BrokerTarget, Capabilities], bool]


class Capability:
    """The requirements conformance cases gate on (see :class:`~eventbus.adapter.Capabilities`)."""

    persistent = Requirement("persistent", lambda _, caps: caps.persistent)
    consumer_groups = Requirement("consumer_groups", lambda _, caps: caps.consumer_groups)
    fanout = Requirement("fanout", lambda _, caps: caps.fanout)
    per_key_ordering = Requirement("ordering=per_key", lambda _, caps: caps.ordering == "per_key")
    redelivery = Requirement("redelivery", lambda _, caps: caps.redelivery)
    replay = Requirement("replay", lambda _, caps: caps.replay)
    dedupe_window = Requirement("dedupe_window", lambda _, caps: caps.dedupe_window is not None)
    no_dedupe_window = Requirement(
        "delivery of a republished event id (it has a dedupe_window that drops the copy; "
        "test_dedupe_window_drops_republished_copy covers that instead)",
        lambda _, caps: caps.dedupe_window is None,
    )
    fault_hooks = Requirement(
        "fault hooks (target.faults/faulty_url)",
        lambda target, _: target.faults is not None and target.faulty_url is not None,
    )
    restart_hook = Requirement(
        "a restart hook (target.restart)", lambda target, _: target.restart is not None
    )
    freeze = Requirement(
        "a freeze fault (target.faults.freeze: a half-open path)",
        lambda target, _: (
            target.faulty_url is not None and callable(getattr(target.faults, "freeze", None))
        ),
    )
    out_of_process = Requirement(
        "a broker other processes can reach (it lives inside the test process), and an "
        "adapter they can build (a registered scheme, or target.adapter a module-level "
        "class or function, not a lambda)",
        lambda target, _: not target.in_process and target.adapter_path() is not None,
    )
    lease = Requirement(
        "a lease it keeps alive (capabilities.lease: none, or one no client can extend, "
        "as its adapter page says)",
        lambda _, caps: caps.lease,
    )
    no_redelivery = Requirement(
        "a refusal to test (it redelivers, so it accepts delivery='at_least_once': "
        "test_explicit_at_least_once_accepted covers that)",
        lambda _, caps: not caps.redelivery,
    )
    no_consumer_groups = Requirement(
        "a refusal to test (its group members compete: "
        "test_competing_consumers_split_exactly_once covers that)",
        lambda _, caps: not caps.consumer_groups,
    )
    group_route = Requirement(
        "a per-group route (capabilities.group_route: dead letters are replayed to the "
        "whole topic)",
        lambda _, caps: caps.group_route,
    )
    browse = Requirement(
        "browsing without consuming (capabilities.browse: eventbus dlq reads the DLQ as "
        "a consumer group)",
        lambda _, caps: caps.browse,
    )
    raw_publish = Requirement(
        "publishing raw bytes (capabilities.raw_publish)", lambda _, caps: caps.raw_publish
    )


@dataclass(frozen=True, slots=True)
class Need:
    """A :class:`Requirement` and why the case needs it."""

    requirement: Requirement
    why: str


def requires(requirement: Requirement, why: str) -> Need:
    """``@case(requires(Capability.redelivery, "a nacked message must come back"))``."""
    return Need(requirement, why)


def case(*needs: Need, timeout: float = 45.0) -> Callable[[CaseBody[S]], CaseTest[S]]:
    """Turn an async case body into a synchronous pytest test taking ``target``.

    Each of ``needs`` (built with :func:`requires`) names a :class:`Capability` and
    why the case needs it; a target without it skips the case saying so. A case
    named in ``target.limits`` is skipped with the reason given there.
    """

    def decorate(body: CaseBody[S]) -> CaseTest[S]:
        name = body.__name__

        def test(self: S, target: BrokerTarget) -> None:
            if name in target.limits:
                pytest.skip(f"{target.name}: {target.limits[name]}")
            caps = target.make_adapter().capabilities
            for need in needs:
                if not need.requirement.holds(target, caps):
                    pytest.skip(f"{target.name} lacks {need.requirement.name}: {need.why}")
            asyncio.run(_run(body, self, Case(target, caps, name), timeout * PATIENCE))

        test.__name__ = name
        test.__qualname__ = body.__qualname__
        test.__doc__ = body.__doc__
        test.__module__ = body.__module__
        return test

    return decorate


async def _run(body: CaseBody[S], suite: S, run: Case, timeout: float) -> None:
    started = time.monotonic()
    try:
        await asyncio.wait_for(body(suite, run), timeout)
    except TimeoutError as exc:
        await _close_after_failure(run)
        raise AssertionError(
            f"{run.name} did not finish within {timeout:.0f}s "
            f"(ran {time.monotonic() - started:.1f}s)"
        ) from exc
    except BaseException:
        await _close_after_failure(run)
        raise
    await run.aclose()


async def _close_after_failure(run: Case) -> None:
    """Clean up without hiding the case's own failure behind a cleanup error."""
    try:
        await run.aclose()
    except Exception:
        log.exception("cleaning up after the failed case %s also failed", run.name)
