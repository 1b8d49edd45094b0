"""A message at its last delivery is not lost when its subscription closes.

With ``max_deliver`` set, a member receiving a message's last delivery carries it
over to a fresh copy on the group's route (:mod:`eventbus_nats.group_route`) and
never gives it back: the server would not deliver it again. ``close()`` keeps
that promise for what it still holds of those, and for what arrives from a pull
request still open as it closes: one last attempt, bounded in time, to carry it
over; only what that cannot carry over (the server unreachable) is lost, logged
at ERROR, and ``close()`` still ends in bounded time.

Each test has its own ``stream_prefix``, so its route stream is its own.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
import pytest
from eventbus_nats import NatsAdapter, group_route
from eventbus_nats.consumer import JetStreamSubscription
from eventbus_nats.wire import ack_facts
from nats.js import JetStreamContext

from eventbus import Context, Event, EventBus, tasks
from eventbus.adapter import Delivery, SubscribeOptions
from eventbus.backoff import Backoff
from eventbus.envelope import Envelope
from eventbus.middleware.retry import RetryPolicy
from integration_tests import harness
from integration_tests.nats.support import next_delivery, run, until

pytestmark = [pytest.mark.broker("nats"), pytest.mark.timeout(120)]

GROUP = "g"


def options(**query: object) -> str:
    """A private ``stream_prefix`` and ``max_deliver=2`` (the second delivery is the
    last), plus ``query``."""
    values = {"stream_prefix": f"CL{uuid.uuid4().hex[:8]}", "max_deliver": 2, **query}
    return "&".join(f"{name}={value}" for name, value in values.items())


@asynccontextmanager
async def jetstream(url: str) -> AsyncIterator[JetStreamContext]:
    """A plain client's JetStream; the test's streams are deleted at the end."""
    prefix = url.split("stream_prefix=")[1].split("&")[0]
    nc = await nats.connect(url.split("?")[0])
    try:
        yield nc.jetstream()
    finally:
        js = nc.jetstream()
        for name in await js.streams_info():
            if name.config.name.startswith(prefix):
                await js.delete_stream(name.config.name)
        await nc.close()


async def member_of_the_group(url: str, topic: str, prefetch: int) -> tuple[NatsAdapter, Any]:
    """A connected adapter and its subscription to ``topic`` as :data:`GROUP`."""
    adapter = NatsAdapter(url)
    await adapter.connect()
    return adapter, await adapter.subscribe(topic, SubscribeOptions(group=GROUP, prefetch=prefetch))


async def set_route_max_msg_size(js: JetStreamContext, adapter: NatsAdapter, size: int) -> None:
    """The route stream refuses (``size`` 1) or takes (``-1``) the carried-over copy."""
    info = await js.stream_info(adapter._routes.stream)
    info.config.max_msg_size = size
    await js.update_stream(info.config)


async def from_the_route(url: str, topic: str, sent: Envelope) -> Delivery:
    """The message, as a fresh adapter's member of the group gets it: the copy on the
    group's route (the server never delivers the original again)."""
    adapter = NatsAdapter(url)
    await adapter.connect()
    try:
        subscription = await adapter.subscribe(topic, SubscribeOptions(group=GROUP))
        try:
            delivery = await next_delivery(subscription)
        except TimeoutError:
            raise AssertionError("the message at its last delivery was lost at close") from None
        assert delivery.envelope is not None and delivery.envelope.id == sent.id
        assert delivery.message_id.startswith(f"{adapter._routes.stream}/")
        await delivery.ack()
        await subscription.close()
        return delivery
    finally:
        await adapter.close()


def read_the_last_delivery_late(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Members read a message's second delivery (the last, ``max_deliver=2``) from
    nats-py's queue 2s late, as a busy event loop would; returns when each came."""
    read = JetStreamSubscription._on_msg
    held: list[float] = []

    async def slow_to_read_the_last(self: JetStreamSubscription, msg: Any) -> None:
        if (msg.reply or "").startswith("$JS.ACK.") and ack_facts(msg)[0] >= 2:
            held.append(time.monotonic())
            await asyncio.sleep(2.0)
        await read(self, msg)

    monkeypatch.setattr(JetStreamSubscription, "_on_msg", slow_to_read_the_last)
    return held


async def a_last_delivery_held(
    js: JetStreamContext, adapter: NatsAdapter, subscription: Any, caplog: pytest.LogCaptureFixture
) -> Envelope:
    """Publish one message and nack its first delivery while the route refuses the copy
    (its ``max_msg_size`` lowered): the member holds the last delivery, trying again
    each second; the route then takes copies again. Returns the message published."""

    def refused() -> bool:
        return any("could not be carried over yet" in r.getMessage() for r in caplog.records)

    sent = Envelope.create(type="t", source="s", data=b"{}")
    await adapter.publish(subscription.main.topic, [sent])
    first = await next_delivery(subscription)
    await set_route_max_msg_size(js, adapter, 1)
    await first.nack()  # the last delivery comes back at once
    await until(refused, 10.0, "the route to refuse the copy")
    await set_route_max_msg_size(js, adapter, -1)
    assert len(subscription.main._carrying) == 1, "not held for carrying over"
    return sent


def test_a_last_delivery_arriving_as_the_subscription_closes_is_carried_over(
    nats_endpoint: harness.Endpoint,
) -> None:
    """The first delivery is nacked with a delay and the subscription closed at once,
    while its next pull request is open (``fetch_timeout=3``): the last delivery
    arrives during ``close()``. It is carried over, not naked (the server would not
    deliver it again), and a fresh member of the group gets the copy."""
    address = f"nats://{nats_endpoint.host}:{nats_endpoint.port}"
    url = f"{address}?{options(fetch_timeout=3)}"
    topic = f"nats-closecarry-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        async with jetstream(url):
            adapter, subscription = await member_of_the_group(url, topic, 1)
            member = subscription.main
            sent = Envelope.create(type="t", source="s", data=b"{}")
            await adapter.publish(topic, [sent])
            first = await next_delivery(subscription)
            assert first.attempt == 1
            await first.nack(1.0)  # the server holds it back a second
            # Its room freed, the member asks again: the request is open for 3s.
            await until(lambda: member._credit() > 0, 5.0, "a pull request after the nack")
            assert not member._carrying and not member._ready
            started = time.monotonic()
            await subscription.close()
            assert time.monotonic() - started > 0.5, "closed before the last delivery came"
            await adapter.close()
            copy = await from_the_route(url, topic, sent)
            assert copy.attempt == 2  # the first ran (nacked); the last did not
            assert not member._carrying

    run(scenario())


def test_a_last_delivery_held_for_carrying_over_at_close_is_carried_over(
    nats_endpoint: harness.Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """The route refuses the copy (its ``max_msg_size`` lowered), so the member
    holds the last delivery and tries again each second; the route takes it again
    and the subscription is closed before the next try: ``close()`` carries it over."""
    address = f"nats://{nats_endpoint.host}:{nats_endpoint.port}"
    url = f"{address}?{options(fetch_timeout=0.2)}"
    topic = f"nats-closecarry-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        async with jetstream(url) as js:
            adapter, subscription = await member_of_the_group(url, topic, 1)
            member = subscription.main
            sent = await a_last_delivery_held(js, adapter, subscription, caplog)
            # The carrier sleeps a second before trying again; close() waits at
            # most fetch_timeout + 0.25s for its pull requests, then stops it.
            await subscription.close()
            await adapter.close()
            copy = await from_the_route(url, topic, sent)
            assert copy.attempt == 2
            assert not member._carrying
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    with caplog.at_level(logging.DEBUG, logger="eventbus.nats"):
        run(scenario())


def test_close_ends_in_bounded_time_holding_a_last_delivery_it_cannot_carry_over(
    nats_endpoint: harness.Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """Holding a last delivery the route refuses, the member loses the server: its
    last attempt at close is bounded (well under ``publish_timeout``), and what it
    could not carry over is logged at ERROR."""
    proxy = harness.FaultProxy(nats_endpoint.host, nats_endpoint.port).start()
    direct = f"nats://{nats_endpoint.host}:{nats_endpoint.port}"
    query = options(fetch_timeout=0.2, publish_timeout=30)
    url = f"nats://127.0.0.1:{proxy.port}?{query}"
    topic = f"nats-closecarry-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        async with jetstream(f"{direct}?{query}") as js:
            adapter, subscription = await member_of_the_group(url, topic, 1)
            await a_last_delivery_held(js, adapter, subscription, caplog)
            await proxy.refuse_connections(30.0)
            started = time.monotonic()
            await asyncio.wait_for(adapter.close(), 20.0)
            took = time.monotonic() - started
            assert took < 12.0, f"close() took {took:.1f}s"
            lost = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert lost and "could not be carried over" in lost[0].getMessage()

    try:
        with caplog.at_level(logging.DEBUG, logger="eventbus.nats"):
            run(scenario())
    finally:
        proxy.stop()


def test_a_last_delivery_still_queued_in_the_client_at_close_is_carried_over(
    nats_endpoint: harness.Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last delivery reaches nats-py's queue for the member's inbox, but is not read
    yet when ``close()`` stops waiting for its pull request (its reading held 2s here,
    past ``fetch_timeout`` + 0.25s, as a busy event loop would hold it): ``close()``
    drains the inbox, so the message is read and carried over, not dropped with the
    subscription (``unsubscribe()`` discards what the client queues)."""
    address = f"nats://{nats_endpoint.host}:{nats_endpoint.port}"
    url = f"{address}?{options(fetch_timeout=1)}"
    topic = f"nats-closecarry-{uuid.uuid4().hex[:8]}"
    held = read_the_last_delivery_late(monkeypatch)

    async def scenario() -> None:
        async with jetstream(url):
            adapter, subscription = await member_of_the_group(url, topic, 1)
            member = subscription.main
            sent = Envelope.create(type="t", source="s", data=b"{}")
            await adapter.publish(topic, [sent])
            first = await next_delivery(subscription)
            await first.nack(0.3)  # back in 0.3s, into the pull request open for 1s
            await until(lambda: member._credit() > 0, 5.0, "a pull request after the nack")
            await subscription.close()
            assert held, "the last delivery did not come during close()"
            await adapter.close()
            copy = await from_the_route(url, topic, sent)
            assert copy.attempt == 2
            assert not member._carrying

    run(scenario())


def test_a_bus_stopped_with_a_last_delivery_still_queued_in_the_client_loses_nothing(
    nats_endpoint: harness.Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same, as a service runs it: the handler fails once and the bus asks the
    broker for the message again in 0.3s (``max_deliver=2``: that is its last
    delivery), and the bus is stopped at once; the last delivery reaches the
    client's queue unread while it stops. A second bus of the group handles it."""
    address = f"nats://{nats_endpoint.host}:{nats_endpoint.port}"
    url = f"{address}?{options(fetch_timeout=1)}"
    topic = f"nats-closecarry-{uuid.uuid4().hex[:8]}"
    held = read_the_last_delivery_late(monkeypatch)

    class Pay(Event, type=f"test.{topic}", topic=topic):
        n: int

    def service() -> EventBus:
        return EventBus.from_url(
            url,
            source="t",
            retry=RetryPolicy(max_attempts=3, in_process_attempts=1),
            redelivery_backoff=Backoff(initial=0.3, max_delay=0.3, jitter=0.0),
        )

    async def scenario() -> None:
        async with jetstream(url):
            first, second = service(), service()
            failed = asyncio.Event()
            handled: list[int] = []

            @first.subscribe(Pay, group=GROUP)
            async def fails_once(event: Pay, ctx: Context) -> None:
                failed.set()
                raise RuntimeError("fails on its first run")

            @second.subscribe(Pay, group=GROUP)
            async def pay(event: Pay, ctx: Context) -> None:
                handled.append(ctx.delivery.attempt)

            async with first:
                await first.publish(Pay(n=1))
                await asyncio.wait_for(failed.wait(), 10.0)
            assert held, "the last delivery did not come while the bus stopped"
            async with second:
                await until(lambda: bool(handled), 15.0, "the second bus to handle it")
            assert handled == [2]

    run(scenario())


def test_a_copy_confirmed_at_close_is_not_reported_lost_when_the_ack_is_cut_short(
    nats_endpoint: harness.Endpoint,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Closing, the member carries a held last delivery over: the route confirms the
    copy, then acknowledging the original blocks past the close's bound (its write held
    here). The message is carried over (a member of the group gets the copy), so no
    ERROR says it was lost: the server does not deliver a last delivery again, acked
    or not, and the copy is what counts."""
    address = f"nats://{nats_endpoint.host}:{nats_endpoint.port}"
    url = f"{address}?{options(fetch_timeout=0.2)}"
    topic = f"nats-closecarry-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(group_route, "CARRY_AT_CLOSE", 1.0)
    original = group_route.write

    async def ack_held(client: Any, commands: Any, count: int, size: int) -> None:
        if b"+ACK" in commands[0]:
            await asyncio.sleep(30.0)
        await original(client, commands, count, size)

    async def scenario() -> None:
        async with jetstream(url) as js:
            adapter, subscription = await member_of_the_group(url, topic, 1)
            sent = await a_last_delivery_held(js, adapter, subscription, caplog)
            monkeypatch.setattr(group_route, "write", ack_held)
            await subscription.close()
            await adapter.close()
            copy = await from_the_route(url, topic, sent)
            assert copy.attempt == 2
        lost = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert not lost, lost

    with caplog.at_level(logging.DEBUG, logger="eventbus.nats"):
        run(scenario())


def test_a_drain_past_its_bound_ends_the_close_and_says_what_the_client_held(
    nats_endpoint: harness.Endpoint,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """nats-py's drain of a member's inbox that does not end within ``CLOSE_GRACE``
    (here: the first message's reading never ends, so the four queued behind it are
    never read) does not hold ``close()``: past the bound it unsubscribes, and a
    warning counts the messages the client still held (they come back after
    ``ack_wait``) instead of saying nothing."""
    address = f"nats://{nats_endpoint.host}:{nats_endpoint.port}"
    url = f"{address}?{options(fetch_timeout=1)}"
    topic = f"nats-closebound-{uuid.uuid4().hex[:8]}"
    read = JetStreamSubscription._on_msg
    reading: list[Any] = []

    async def never_done_with_the_first(self: JetStreamSubscription, msg: Any) -> None:
        if (msg.reply or "").startswith("$JS.ACK.") and not reading:
            reading.append(msg)
            await asyncio.sleep(60)  # cancelled when the subscription goes
        await read(self, msg)

    monkeypatch.setattr(JetStreamSubscription, "_on_msg", never_done_with_the_first)

    async def scenario() -> None:
        async with jetstream(url):
            adapter, subscription = await member_of_the_group(url, topic, 5)
            member = subscription.main
            await adapter.publish(
                topic, [Envelope.create(type="t", source="s", data=b"{}") for _ in range(5)]
            )
            inbox = member._inbox_sub
            await until(lambda: reading and inbox.pending_msgs == 4, 10.0, "4 queued behind")
            started = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="eventbus_nats"):
                await subscription.close()
            took = time.monotonic() - started
            await adapter.close()
            # The pull request's wait (fetch_timeout + 0.25 s), then the drain's bound.
            assert tasks.CLOSE_GRACE <= took < tasks.CLOSE_GRACE + 4.0, took
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            said = [re.search(r"(\d+) message\(s\) the client still held", m) for m in warnings]
            # The four messages, and any status the server sent meanwhile (also unread).
            assert [int(m.group(1)) for m in said if m and int(m.group(1)) >= 4], warnings

    run(scenario())
