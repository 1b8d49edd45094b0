"""Failure classes of connections and brokers, each found stalling or losing messages on a
real broker while ``health()`` said ok: resources deleted underneath, half-open connections,
settles that fail, infrastructure outages, permanent refusals, silent endpoints, handlers
that outlive their lease."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from eventbus.backoff import Backoff
from eventbus.bus import EventBus
from eventbus.context import Context
from eventbus.deadletters import DeadLetters
from eventbus.errors import (
    BrokerConnectionError,
    IdempotencyStoreError,
    MessageTooLargeError,
    TopicNotFoundError,
)
from eventbus.middleware.idempotency import ClaimResult, MemoryIdempotencyStore
from eventbus.testing.collector import PATIENCE, Collector
from eventbus.testing.conformance._events import Ping, on_topic, record_seqs
from eventbus.testing.conformance._support import QUIET, WAIT, Capability, Case, case, requires
from eventbus.testing.target import FaultInjector

OUTAGE = 9.0
"""Seconds the settle-failure case refuses connections."""
IDLE_FREEZE = 10.0
"""Seconds the idle-freeze case freezes the path: past its ``stall_after`` (2 s), one
look and the stall watch's 5 s wait for the backlog, so that read goes unanswered."""
FAST_REDELIVERY = Backoff(initial=0.05, max_delay=0.3, jitter=0.0)
"""Redelivery delays after infrastructure failures, short so the cases finish quickly."""


async def _publish_until_handled(
    bus: EventBus, event_cls: type[Ping], handled: Collector[int], first: int, timeout: float
) -> int:
    """Publish ``first``, ``first + 1``... one a second until one of them is handled (a
    subscription that recovers by itself may miss what went out before it was back, on a
    broker that keeps nothing for an absent group); return the seq that got through."""
    deadline = time.monotonic() + timeout
    seq = first
    while time.monotonic() < deadline:
        with contextlib.suppress(BrokerConnectionError, TopicNotFoundError):
            await bus.publish(event_cls(seq=seq))
        seq += 1
        with contextlib.suppress(AssertionError):
            got = await handled.wait(
                lambda items: any(s >= first for s in items),
                "a message after the fault",
                timeout=1.0,
            )
            return min(s for s in got if s >= first)
    raise AssertionError(
        f"no message published after the fault was handled within "
        f"{timeout:.0f}s (published seqs {first}..{seq - 1})"
    )


async def _consumer_behind_faults(
    run: Case,
) -> tuple[FaultInjector, type[Ping], Collector[int], EventBus]:
    """The target's fault hooks, and a started bus on its faulty URL (stall watch after
    2 s) whose handler records the seqs of a new topic's events in the collector."""
    faults, url = run.target.faults, run.target.faulty_url
    assert faults is not None and url is not None
    event_cls = on_topic(Ping, run.topic())
    handled: Collector[int] = Collector("handler")
    bus = await run.consumer(
        event_cls, record_seqs(handled), group=run.group(), bus=run.bus(url, stall_after=2.0)
    )
    return faults, event_cls, handled, bus


T = TypeVar("T")


class _FlakyStore(MemoryIdempotencyStore):
    """An idempotency store whose first ``outage`` claims fail, like a store that is down."""

    def __init__(self, outage: int) -> None:
        super().__init__()
        self.outage = outage
        self.claims = 0

    async def claim(self, key: str, lease: float) -> ClaimResult:
        self.claims += 1
        if self.claims <= self.outage:
            raise IdempotencyStoreError(f"store unreachable (claim {self.claims}, injected)")
        return await super().claim(key, lease)


class ResilienceCases:
    """A fault in the broker, the connection or the infrastructure never leaves a
    subscription idle while its broker holds messages, and never reports ok meanwhile."""

    @case(
        requires(
            Capability.persistent,
            "the broker keeps resources for a group that can be deleted underneath it",
        ),
        timeout=120.0,
    )
    async def test_resource_deleted_underneath_recovered_or_reported(self, run: Case) -> None:
        """The group's consumer, queue, stream or consumer group is deleted on the broker
        while subscribed: messages published afterwards are all handled (the adapter or the
        bus's stall watch provisions again), or the subscription is visibly failed
        (``health()`` not ok) — never "running" and idle."""
        delete = _declared(
            run,
            run.target.delete_underneath,
            "keeps group resources on the broker (persistent) but its target declares no "
            "delete_underneath hook",
        )
        event_cls = on_topic(Ping, run.topic())
        topic, group = event_cls.default_topic(), run.group()
        handled: Collector[int] = Collector("handler")
        bus = await run.consumer(
            event_cls, record_seqs(handled), group=group, bus=run.bus(stall_after=2.0)
        )
        publisher = await run.publisher()
        await publisher.publish(event_cls(seq=0))
        await handled.wait_count(1)
        await delete(topic, group)
        try:
            seq = await _publish_until_handled(publisher, event_cls, handled, 1, 45 * PATIENCE)
        except AssertionError:
            health = await bus.health()
            assert not health.ok, (
                "after its resources were deleted the subscription handles nothing, yet "
                f"health() says ok: {health.subscriptions}"
            )
            return
        later = list(range(1000, 1005))
        await publisher.publish_many([event_cls(seq=s) for s in later])
        await handled.wait(
            lambda items: set(later) <= set(items),
            f"every message published after the recovery (from {seq} on)",
        )
        assert (await bus.health()).ok

    @case(requires(Capability.freeze, "the fault proxy freezes the connection"), timeout=120.0)
    async def test_half_open_connection_detected(self, run: Case) -> None:
        """The path to the broker stops forwarding without closing (``faults.freeze()``):
        ``health()`` turns false within the adapter's declared ``half_open_bound`` and
        recovers after ``thaw()``; messages published then are all handled."""
        faults, event_cls, handled, bus = await _consumer_behind_faults(run)
        bound = bus.adapter.capabilities.half_open_bound
        if bound is None:
            pytest.fail(
                f"{run.target.name}: the adapter declares no half_open_bound; every "
                "adapter must notice a half-open connection within a stated bound"
            )
        publisher = await run.publisher()
        await publisher.publish(event_cls(seq=0))
        await handled.wait_count(1)
        frozen_at = time.monotonic()
        await faults.freeze()
        try:
            limit = (bound + 5.0) * PATIENCE
            while (await bus.health()).ok:
                if time.monotonic() - frozen_at > limit:
                    raise AssertionError(
                        f"health() still ok {limit:.0f}s into a half-open connection; the "
                        f"adapter declares it notices one within {bound:g}s"
                    )
                await asyncio.sleep(0.2)
        finally:
            await faults.thaw()
        seq = await _publish_until_handled(publisher, event_cls, handled, 1, 60 * PATIENCE)
        later = list(range(1000, 1005))
        await publisher.publish_many([event_cls(seq=s) for s in later])
        await handled.wait(
            lambda items: set(later) <= set(items),
            f"every message published after the thaw (from {seq} on)",
        )

    @case(requires(Capability.freeze, "the fault proxy freezes the connection"), timeout=120.0)
    async def test_idle_subscription_running_again_after_a_freeze(self, run: Case) -> None:
        """A subscription with nothing to consume, its path frozen long enough for the stall
        watch's backlog query to go unanswered (so it may be reported stalled and subscribe
        again): after ``thaw()``, with still nothing published, ``health()`` is ok and the
        subscription ``running`` within a bounded time. An idle group makes no progress,
        so a stall that only progress could end outlived the freeze for good (#28)."""
        faults, _, handled, bus = await _consumer_behind_faults(run)
        await faults.freeze()
        try:
            await asyncio.sleep(IDLE_FREEZE)
        finally:
            await faults.thaw()
        thawed_at = time.monotonic()
        limit = 30 * PATIENCE
        while not (health := await bus.health()).ok:
            if time.monotonic() - thawed_at > limit:
                raise AssertionError(
                    f"{limit:.0f}s after the thaw of a {IDLE_FREEZE:g}s freeze, with nothing "
                    f"published, health() is still not ok: {health.detail}"
                )
            await asyncio.sleep(0.2)
        assert [s.state for s in health.subscriptions] == ["running"], health.subscriptions
        assert not handled.items, f"nothing was published, yet handled {handled.items}"

    @case(
        requires(Capability.fault_hooks, "the connection is cut while a handler runs"),
        requires(Capability.redelivery, "the message must come back"),
        timeout=120.0,
    )
    async def test_failed_settle_releases_the_message(self, run: Case) -> None:
        """The connection is refused for longer than a client retries a call while a handler
        fails, so its nack (and an ack) cannot reach the broker: the message comes back and
        is handled, and with one prefetch slot later messages still flow (no slot leaked,
        no entry held)."""
        faults, url = run.target.faults, run.target.faulty_url
        assert faults is not None and url is not None
        event_cls = on_topic(Ping, run.topic())
        runs: Collector[tuple[int, int]] = Collector("handler runs")
        done: Collector[int] = Collector("handled")
        bus = run.bus(url, prefetch_per_worker=1, redelivery_backoff=FAST_REDELIVERY)
        # The refusal waits for the publish to be confirmed: cut before its confirm
        # arrived, the publisher would send the event again (as it should), and the
        # copy, a new message, would cut the connection again.
        confirmed = asyncio.Event()

        @bus.subscribe(event_cls, group=run.group(), concurrency=1)
        async def handle(event: Ping, ctx: Context) -> None:
            runs.add((event.seq, ctx.attempt))
            if event.seq == 0 and ctx.attempt == 1:
                await confirmed.wait()
                # Longer than a client's own retries of a failed call (redis-py's ~7 s),
                # so the settle really fails instead of being retried through.
                await faults.refuse_connections(OUTAGE)
                raise RuntimeError("fails while the broker is out of reach")
            done.add(event.seq)

        await bus.start()
        publisher = await run.publisher(run.target.url)
        await publisher.publish(event_cls(seq=0))
        confirmed.set()
        await runs.wait_count(1)
        await asyncio.sleep(OUTAGE + 0.5)  # the refusal is over; publish the rest
        await publisher.publish_many([event_cls(seq=s) for s in (1, 2, 3)])
        await done.wait(
            lambda items: {0, 1, 2, 3} <= set(items),
            "the failed message again and every later one",
            timeout=WAIT * 3,
        )

    @case(
        requires(
            Capability.redelivery, "the message goes back to the broker while the store is down"
        ),
        timeout=90.0,
    )
    async def test_infrastructure_failure_spends_no_delivery_budget(self, run: Case) -> None:
        """An idempotency store down for more claims than ``max_attempts`` leaves the
        message with the broker (redelivered, never run, never dead-lettered, never dropped
        by a broker-side delivery limit); once the store answers it is handled exactly once."""
        event_cls, _, group, dlq = await run.watched_ping()
        store = _FlakyStore(outage=5)  # FAST_RETRY allows 3 attempts
        handled: Collector[int] = Collector("handler")
        await run.consumer(
            event_cls,
            record_seqs(handled),
            group=group,
            bus=run.bus(idempotency=store, redelivery_backoff=FAST_REDELIVERY),
        )
        await (await run.publisher()).publish(event_cls(seq=5))
        await handled.wait_count(1, timeout=WAIT * 3)
        await asyncio.sleep(QUIET)
        assert handled.items == [5], f"handled {handled.items}"
        assert store.claims > store.outage
        assert not dlq.items, "a message whose handler never failed was dead-lettered"

    @case(timeout=90.0)
    async def test_permanent_refusals_are_not_outages(self, run: Case) -> None:
        """What the broker refuses for good is raised at once as what it is, never retried
        as an outage until ``publish_timeout``: an event over the (server's real) size limit
        is ``MessageTooLargeError``; one just under the declared limit is taken and
        delivered, or refused the same way; listing the dead letters of a topic that never
        existed is ``TopicNotFoundError`` and creates nothing."""
        event_cls = on_topic(Ping, run.topic())
        handled: Collector[int] = Collector("handler")
        bus = await run.consumer(
            event_cls, record_seqs(handled), group=run.group(), bus=run.bus(publish_timeout=30.0)
        )
        limit = bus.adapter.capabilities.max_message_bytes  # as learned at connect
        for seq, size in ((1, limit + 1), (2, max(0, limit - 2048))):
            started = time.monotonic()
            try:
                await bus.publish(event_cls(seq=seq, note="x" * size))
            except MessageTooLargeError:
                continue  # refused for good, at once: right for both
            finally:
                took = time.monotonic() - started
                assert took < 10 * PATIENCE, (
                    f"publishing {size} bytes took {took:.1f}s: a refusal retried as an outage"
                )
            assert seq == 2, f"an event of {size} bytes passed a {limit}-byte limit"
            await handled.wait(lambda items: 2 in items, "the event just under the limit")
        reader = await run.connected_adapter()
        dead = DeadLetters(reader, idle=0.5)
        missing = run.unique("never")
        for _ in range(2):  # the first look must not have created it
            with pytest.raises(TopicNotFoundError):
                await dead.list(missing, "nobody")

    @case(requires(Capability.freeze, "the fault proxy makes a silent endpoint"), timeout=90.0)
    async def test_silent_endpoint_fails_connect_in_time(self, run: Case) -> None:
        """An endpoint that accepts TCP and never speaks the protocol (the proxy frozen
        before connecting): a bus on it fails ``start()`` with ``BrokerConnectionError``
        within the adapter's own connect bound (well before ``start_timeout``), closing
        what the adapter opened, and ``stop()`` returns at once."""
        faults, url = run.target.faults, run.target.faulty_url
        assert faults is not None and url is not None
        await faults.freeze()
        try:
            # Through a bus, as a service meets it: start() connects (and, failing,
            # closes what the adapter opened, bounded) and stop() has nothing to wait for.
            bus = EventBus(run.target.make_adapter(url), start_timeout=60.0)
            started = time.monotonic()
            with pytest.raises(BrokerConnectionError):
                await asyncio.wait_for(bus.start(), 90 * PATIENCE)
            took = time.monotonic() - started
            assert took < 25 * PATIENCE, (
                f"connecting to a silent endpoint took {took:.1f}s to fail (the adapter's "
                "connect timeout, not the bus's start_timeout, must end it)"
            )
            started = time.monotonic()
            await asyncio.wait_for(bus.stop(timeout=2.0), 30 * PATIENCE)
            assert time.monotonic() - started < 5 * PATIENCE, "stop() hung"
        finally:
            await faults.thaw()

    @case(
        requires(Capability.lease, "the broker takes a delivery back after a lease"), timeout=120.0
    )
    async def test_slow_handler_outliving_the_lease_runs_once(self, run: Case) -> None:
        """A handler running well past the broker's lease (poll interval, visibility
        timeout, ack wait, claim time) on a group of two members runs once: the adapter
        keeps its delivery alive, so neither member gets it again meanwhile."""
        lease = _declared(
            run,
            run.target.short_lease,
            "declares a lease but its target gives no short_lease URL to test it with",
        )
        event_cls = on_topic(Ping, run.topic())
        group = run.group()
        runs: Collector[tuple[str, int]] = Collector("handler runs")
        finished: Collector[int] = Collector("finished")
        hold = 2.5 * lease.seconds

        def slow(name: str) -> Callable[[Ping, Context], Awaitable[None]]:
            async def handle(event: Ping, ctx: Context) -> None:
                runs.add((name, ctx.delivery.attempt))
                await asyncio.sleep(hold)
                finished.add(event.seq)

            return handle

        for name in ("a", "b"):
            await run.consumer(event_cls, slow(name), group=group, bus=run.bus(lease.url))
        await (await run.publisher(lease.url)).publish(event_cls(seq=1))
        await finished.wait_count(1, timeout=hold + WAIT * 2)
        await asyncio.sleep(lease.seconds * 1.5)
        assert len(runs.items) == 1, (
            f"a {hold:.1f}s handler on a {lease.seconds:g}s lease ran {len(runs.items)} "
            f"times: {runs.items}"
        )


def _declared(run: Case, hook: T | None, missing: str) -> T:
    """``hook`` (what ``run``'s target gives a case), or the case fails: the target is
    named, then ``missing`` says what it lacks."""
    if hook is None:
        pytest.fail(f"{run.target.name} {missing}")
    return hook
