"""The shared settings vocabulary on a real nats-server (issue #20): where a new group
starts (the subscription's start_from wins over the URL's), provision=false and a
refused stream raising ProvisioningError, client_name reaching the server, and a
nats-py client of the user's own used as it is.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any

import nats
import pytest
from eventbus_nats import NatsAdapter, NatsCoreAdapter, NatsSettings
from nats.js.api import StreamConfig

from eventbus import Context, Event, EventBus
from eventbus.adapter import SubscribeOptions
from eventbus.envelope import Envelope
from eventbus.errors import BrokerConnectionError, ProvisioningError
from integration_tests import harness

pytestmark = [pytest.mark.broker("nats"), pytest.mark.timeout(120)]


def run(scenario: Coroutine[Any, Any, None], timeout: float = 60.0) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout))


@pytest.fixture(scope="module")
def nats_url(nats_endpoint: harness.Endpoint) -> str:
    return f"nats://{nats_endpoint.host}:{nats_endpoint.port}"


def ping(n: int) -> Envelope:
    return Envelope.create(type="test.ping", source="nats-tests", data=b'{"n":%d}' % n)


def test_the_subscriptions_start_from_wins_over_the_urls(nats_url: str) -> None:
    """URL start_from=earliest: a subscription that gives none replays what the stream
    holds; one that says latest gets only what is published after it joined."""
    topic = f"nats.vocab.start.{uuid.uuid4().hex[:8]}"

    class Pinged(Event, type=f"test.{topic}", topic=topic):
        n: int

    async def scenario() -> None:
        publisher = EventBus.from_url(nats_url, source="t")
        async with publisher:
            await publisher.publish(Pinged(n=1))
        bus = EventBus.from_url(f"{nats_url}?start_from=earliest", source="t")
        default: list[int] = []
        latest: list[int] = []

        @bus.subscribe(Pinged, group="default")
        async def by_default(event: Pinged, ctx: Context) -> None:
            default.append(event.n)

        @bus.subscribe(Pinged, group="latest", start_from="latest")
        async def explicit(event: Pinged, ctx: Context) -> None:
            latest.append(event.n)

        async with bus:
            await bus.publish(Pinged(n=2))
            for _ in range(100):
                if len(default) == 2 and latest:
                    break
                await asyncio.sleep(0.1)
        assert sorted(default) == [1, 2], "the URL's earliest is the default"
        assert latest == [2], "the subscription's explicit latest wins over the URL's"

    run(scenario())


def test_provision_false_refuses_a_missing_stream(nats_url: str) -> None:
    """provision=false (and its old name create_streams=false): publishing to or
    subscribing on a topic without a stream raises ProvisioningError naming it."""

    async def scenario() -> None:
        topic = f"nats.vocab.missing.{uuid.uuid4().hex[:8]}"
        with pytest.warns(DeprecationWarning):
            old = NatsAdapter(f"{nats_url}?create_streams=false")
        for adapter in (NatsAdapter(f"{nats_url}?provision=false"), old):
            await adapter.connect()
            try:
                with pytest.raises(ProvisioningError, match="provision=false") as raised:
                    await adapter.publish(topic, [ping(1)])
                assert topic in str(raised.value)
                with pytest.raises(ProvisioningError, match="provision=false"):
                    await adapter.subscribe(topic, SubscribeOptions(group="g"))
            finally:
                await adapter.close()

    run(scenario())


def test_a_stream_the_server_refuses_is_a_provisioning_error(nats_url: str) -> None:
    """An operator's stream already holds the topic's subject under another name: the
    server refuses ours (400, subjects overlap). That does not change by retrying, so
    it is a ProvisioningError (the subscription dies visibly), not a connection error
    retried for ever."""

    async def scenario() -> None:
        topic = f"nats.vocab.taken.{uuid.uuid4().hex[:8]}"
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=f"OPS_{uuid.uuid4().hex[:8]}", subjects=[topic]))
        adapter = NatsAdapter(nats_url)
        try:
            with pytest.raises(ProvisioningError) as raised:
                await adapter.publish(topic, [ping(1)])
            assert topic in str(raised.value) and "BadRequestError" in str(raised.value)
            with pytest.raises(ProvisioningError):
                await adapter.subscribe(topic, SubscribeOptions(group="g"))
        finally:
            await adapter.close()
            await nc.close()

    run(scenario())


def test_client_name_reaches_the_server(nats_url: str) -> None:
    async def scenario() -> None:
        adapter = NatsAdapter(f"{nats_url}?client_name=billing-{uuid.uuid4().hex[:6]}")
        await adapter.connect()
        try:
            assert adapter.client.options["name"] == adapter.settings.client_name
            assert adapter.settings.client_name.startswith("billing-")
        finally:
            await adapter.close()

    run(scenario())


@pytest.mark.parametrize("core", [False, True], ids=["jetstream", "core"])
def test_a_client_of_your_own_is_used_as_it_is(nats_url: str, core: bool) -> None:
    """NatsAdapter(settings=..., client=nc): the adapter publishes and consumes on the
    user's connection (its own name), and close() leaves that connection open."""

    async def scenario() -> None:
        topic = f"nats.vocab.own.{uuid.uuid4().hex[:8]}"
        nc = await nats.connect(nats_url, name="mine")
        settings = NatsSettings.from_url(
            nats_url.replace("nats://", "nats+core://") if core else nats_url
        )
        adapter = (NatsCoreAdapter if core else NatsAdapter)(settings=settings, client=nc)
        try:
            await adapter.connect()
            assert adapter.client is nc
            subscription = await adapter.subscribe(topic, SubscribeOptions(group="g"))
            await adapter.publish(topic, [ping(7)])

            async def take() -> bytes:
                async for delivery in subscription:
                    await delivery.ack()
                    assert delivery.envelope is not None
                    return delivery.envelope.data
                raise AssertionError("the subscription ended")

            assert await asyncio.wait_for(take(), 10) == b'{"n":7}'
            await adapter.close()
            assert nc.is_connected, "the adapter closed a client it was given"
            await nc.flush(2)
        finally:
            await adapter.close()
            await nc.close()

    run(scenario())


def test_a_client_not_connected_yet_is_refused_at_connect(nats_url: str) -> None:
    async def scenario() -> None:
        adapter = NatsAdapter(settings=NatsSettings.from_url(nats_url), client=nats.NATS())
        with pytest.raises(BrokerConnectionError, match="not connected; connect it first"):
            await adapter.connect()

    run(scenario())
