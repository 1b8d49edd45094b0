"""The shared settings vocabulary on a real Redis (issue #20): the URL's start_from is
the default a subscription's own value overrides, provision=false creates no stream
(a missing one is a ProvisioningError, publishing or subscribing), client_name is the
connection's CLIENT SETNAME, durations are seconds (the ``*_ms`` names of 0.1 still
work, with one warning), and a redis-py client of the user's own is used as it is.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from eventbus_redis import RedisPubSubAdapter, RedisSettings, RedisStreamsAdapter
from redis.asyncio import Redis

from eventbus import Context, Event, EventBus
from eventbus.adapter import SubscribeOptions
from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError, InvalidURLError, ProvisioningError

pytestmark = [pytest.mark.broker("redis"), pytest.mark.timeout(120)]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def name(kind: str) -> str:
    return f"test-redis-vocab-{kind}-{uuid.uuid4().hex[:8]}"


def ping(n: int) -> Envelope:
    return Envelope.create(type="test.ping", source="redis-tests", data=b'{"n":%d}' % n)


# -- settings, no broker -----------------------------------------------------------------


def test_durations_are_seconds_and_the_ms_names_still_work_with_one_warning() -> None:
    s = RedisSettings.from_url("redis+streams://h/0?block=0.5&claim_idle=2.5&claim_interval=0.25")
    assert (s.block, s.claim_idle, s.claim_interval) == (0.5, 2.5, 0.25)
    with pytest.warns(DeprecationWarning) as warned:
        old = RedisSettings.from_url(
            "redis+streams://h/0?block_ms=500&claim_idle_ms=2500&claim_interval_ms=250"
        )
    assert len(warned) == 1
    text = str(warned[0].message)
    assert "block_ms -> block (seconds)" in text and "claim_idle_ms -> claim_idle" in text
    assert (old.block, old.claim_idle, old.claim_interval) == (0.5, 2.5, 0.25)


def test_the_tls_names_of_01_still_work_with_one_warning() -> None:
    with pytest.warns(DeprecationWarning) as warned:
        s = RedisSettings.from_url(
            "rediss://h/0?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem"
            "&ssl_keyfile=/k.pem&ssl_cert_reqs=none"
        )
    assert len(warned) == 1 and "ssl_cert_reqs -> tls_verify" in str(warned[0].message)
    assert (s.tls_ca, s.tls_cert, s.tls_key, s.tls_verify) == ("/ca.pem", "/c.pem", "/k.pem", False)
    with pytest.warns(DeprecationWarning):
        assert RedisSettings.from_url("rediss://h/0?ssl_cert_reqs=optional").tls_verify


@pytest.mark.filterwarnings("ignore:option 'ssl_ca_certs':DeprecationWarning")
@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://h/0?tls_ca=/ca.pem", ["tls_ca", "TLS", "rediss://"]),
        ("redis+streams://h/0?ssl_ca_certs=/ca.pem", ["tls_ca", "rediss+streams://"]),
        ("rediss://h/0?tls_cert=/c.pem", ["tls_cert", "tls_key"]),
        ("redis+streams://h/0?block=inf", ["block", "finite"]),
        ("redis+streams://h/0?claim_idle=0.01", ["claim_idle", ">= 0.1"]),
        ("redis+streams://h/0?block=1&block_ms=50&claim_idle=x", ["claim_idle"]),
        ("redis://h/0?block=1", ["block", "Streams"]),
        ("redis://h/0?claim_idle_ms=100", ["claim_idle_ms", "Streams"]),
    ],
)
def test_bad_shared_options_are_refused_in_one_line(url: str, words: list[str]) -> None:
    with pytest.raises(InvalidURLError) as raised:
        RedisSettings.from_url(url)
    message = str(raised.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


def test_settings_made_in_code() -> None:
    s = RedisSettings(mode="streams", host="redis.internal", client_name="billing", claim_idle=5)
    assert s.masked_url == "redis+streams://redis.internal:6379/0"
    adapter = RedisStreamsAdapter(settings=s)
    assert adapter.settings is s and adapter.capabilities.lease
    assert RedisPubSubAdapter(settings=RedisSettings(mode="pubsub", tls=True)).settings.tls
    with pytest.raises(InvalidURLError, match="tls"):
        RedisSettings(tls_ca="/ca.pem")
    with pytest.raises(TypeError, match="URL or settings"):
        RedisStreamsAdapter()
    with pytest.raises(TypeError, match="URL or settings"):
        RedisStreamsAdapter("redis+streams://h/0", settings=s)


def test_the_urls_start_from_is_the_adapters_default_for_new_groups() -> None:
    """The core applies it (eventbus.adapter.start_from_for); Pub/Sub takes it too."""
    assert RedisStreamsAdapter("redis+streams://h/0?start_from=earliest").start_from == "earliest"
    assert RedisStreamsAdapter("redis+streams://h/0").start_from is None
    assert RedisPubSubAdapter("redis://h/0?start_from=earliest").start_from == "earliest"


def test_a_given_client_that_decodes_replies_is_refused() -> None:
    """Entries are bytes to the codec: a client with decode_responses=True would hand
    it text, so it is refused when the adapter is made, saying what to change."""
    client = Redis(decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisStreamsAdapter(settings=RedisSettings(), client=client)


# -- on Redis ------------------------------------------------------------------------------


def test_the_subscriptions_start_from_wins_over_the_urls(streams_url: str) -> None:
    topic = name("start")

    class Pinged(Event, type=f"test.{topic}", topic=topic):
        n: int

    async def scenario() -> None:
        publisher = EventBus.from_url(streams_url, source="t")
        async with publisher:
            await publisher.publish(Pinged(n=1))
        bus = EventBus.from_url(f"{streams_url}?start_from=earliest", source="t")
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
            await asyncio.sleep(0.3)  # room for a wrong late delivery to show
        assert sorted(default) == [1, 2], "the URL's earliest is the default"
        assert latest == [2], "the subscription's explicit latest wins over the URL's"

    run(scenario)


def test_provision_false_creates_no_stream(streams_url: str) -> None:
    """Subscribing to or publishing on a topic whose stream is missing raises
    ProvisioningError naming the topic and the option; an existing stream works (its
    group is created: groups are not resources an operator declares)."""

    async def scenario() -> None:
        adapter = RedisStreamsAdapter(f"{streams_url}?provision=false")
        raw = Redis.from_url(streams_url.replace("redis+streams://", "redis://", 1))
        topic, there = name("missing"), name("there")
        try:
            await adapter.connect()
            with pytest.raises(ProvisioningError) as raised:
                await adapter.subscribe(topic, SubscribeOptions(group="g"))
            assert topic in str(raised.value) and "provision" in str(raised.value)
            for batch in ([ping(1)], [ping(1), ping(2)]):  # one XADD, and the batch script
                with pytest.raises(ProvisioningError) as raised:
                    await adapter.publish(topic, batch)
                assert topic in str(raised.value) and "provision" in str(raised.value)
            assert not await raw.exists(topic)
            await raw.xgroup_create(there, "ops", id="$", mkstream=True)
            subscription = await adapter.subscribe(there, SubscribeOptions(group="g"))
            await adapter.publish(there, [ping(3), ping(4)])
            got = []
            async for delivery in subscription:
                got.append(delivery)
                await delivery.ack()
                if len(got) == 2:
                    break
            assert [d.envelope.data for d in got if d.envelope] == [b'{"n":3}', b'{"n":4}']
        finally:
            await adapter.close()
            await raw.delete(there)
            await raw.aclose()

    run(scenario)


def test_client_name_is_the_connections_name(streams_url: str) -> None:
    async def scenario() -> None:
        adapter = RedisStreamsAdapter(f"{streams_url}?client_name=billing-{uuid.uuid4().hex[:6]}")
        try:
            await adapter.connect()
            assert await adapter.client.client_getname() == adapter.settings.client_name
        finally:
            await adapter.close()

    run(scenario)


def test_a_given_client_is_used_as_it_is_and_left_open(streams_url: str) -> None:
    async def scenario() -> None:
        client: Any = Redis.from_url(
            streams_url.replace("redis+streams://", "redis://", 1), client_name="mine"
        )
        topic = name("given")
        adapter = RedisStreamsAdapter(settings=RedisSettings.from_url(streams_url), client=client)
        try:
            await adapter.connect()
            assert adapter.client is client
            subscription = await adapter.subscribe(topic, SubscribeOptions(group="g"))
            await adapter.publish(topic, [ping(7)])
            async for delivery in subscription:
                await delivery.ack()
                break
            await adapter.close()
            assert await client.ping() and await client.client_getname() == "mine"
            assert await client.xlen(topic) == 1
        finally:
            await client.delete(topic)
            await client.aclose()

    run(scenario)
