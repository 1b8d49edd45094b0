"""The shared options on the SQL brokers (sqlite://, postgres://), on real databases.

The same words as on the five broker adapters (``integration_tests/test_settings_brokers.py``):
``start_from`` in the URL is the default for subscriptions that give none (the
subscription's own wins); ``provision=false`` creates nothing and refuses what is
missing with a ProvisioningError; ``client_name`` names the consumers (the ``owner``
of what they hold, and PostgreSQL's ``application_name``); on PostgreSQL the ``tls_*``
options reach the driver.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from eventbus import EventBus, ProvisioningError
from eventbus.adapter import Delivery, SubscribeOptions
from eventbus.envelope import Envelope
from eventbus.events import Event
from eventbus.registry_adapters import adapter_from_url

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database's broker URL (no query)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    return str(request.getfixturevalue("postgres_url"))


def url_with(base: str, **options: str) -> str:
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return f"{base}{'&' if '?' in base else '?'}{query}"


def envelope(n: int) -> Envelope:
    return Envelope.create(type="test.n", source="tests", data=str(n).encode())


class Numbered(Event):
    n: int


async def test_start_from_in_the_url_is_the_default_and_the_subscription_wins(
    database: str,
) -> None:
    topic = f"sf-{uuid.uuid4().hex[:8]}"
    early = EventBus.from_url(database, source="tests")
    async with early:
        await early.publish(Numbered(n=1), topic=topic)  # before any group exists
    bus = EventBus.from_url(url_with(database, start_from="earliest"), source="tests")
    by_url: list[int] = []
    by_subscription: list[int] = []

    @bus.subscribe(topic, group="follows-the-url")
    async def first(event: Numbered) -> None:
        by_url.append(event.n)

    @bus.subscribe(topic, group="says-latest", start_from="latest")
    async def second(event: Numbered) -> None:
        by_subscription.append(event.n)

    async with bus:
        await bus.publish(Numbered(n=2), topic=topic)
        for _ in range(200):
            if by_url == [1, 2] and by_subscription == [2]:
                break
            await asyncio.sleep(0.05)
    assert by_url == [1, 2]  # the URL's earliest: the message from before the group
    assert by_subscription == [2]  # the subscription's latest wins over the URL


async def test_provision_false_creates_nothing_and_names_what_is_missing(database: str) -> None:
    refusing = adapter_from_url(url_with(database, provision="false"))
    with pytest.raises(ProvisioningError) as raised:
        await refusing.connect()
    assert "eventbus_messages" in str(raised.value) and "provision" in str(raised.value)
    await refusing.close()

    # The tables made by a role that may (provision=true, the default), and one topic.
    maker = adapter_from_url(database)
    await maker.connect()
    await maker.publish("made", [envelope(1)])
    await maker.close()

    adapter = adapter_from_url(url_with(database, provision="false"))
    await adapter.connect()
    try:
        with pytest.raises(ProvisioningError) as raised:
            await adapter.subscribe("missing", SubscribeOptions(group="g"))
        assert "'missing'" in str(raised.value) and "provision" in str(raised.value)
        with pytest.raises(ProvisioningError):
            await adapter.publish("missing", [envelope(2)])
        await adapter.publish("made", [envelope(3)])  # what exists works as ever
        subscription = await adapter.subscribe(
            "made", SubscribeOptions(group="g", start_from="earliest")
        )
        got: list[Delivery] = []
        async with asyncio.timeout(30):
            async for delivery in subscription:
                got.append(delivery)
                await delivery.ack()
                if len(got) == 2:
                    break
        assert [d.envelope.data for d in got] == [b"1", b"3"]
        await subscription.close()
    finally:
        await adapter.close()


async def test_client_name_names_the_consumer(database: str) -> None:
    name = f"billing-{uuid.uuid4().hex[:6]}"
    adapter = adapter_from_url(url_with(database, client_name=name))
    await adapter.connect()
    try:
        await adapter.publish("named", [envelope(1)])
        subscription = await adapter.subscribe(
            "named", SubscribeOptions(group="g", start_from="earliest")
        )
        async with asyncio.timeout(30):
            delivery = await anext(aiter(subscription))
        hub = adapter.hub  # type: ignore[attr-defined]
        async with hub.db.transaction() as tx:  # who holds the message, as an operator sees
            owners = [row[0] for row in await tx.fetch("SELECT owner FROM eventbus_pending")]
        assert owners and all(str(owner).startswith(f"{name}-") for owner in owners)
        if database.startswith("postgres"):
            async with hub.db.transaction() as tx:
                shown = await tx.fetchval(
                    "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
                )
            assert shown == name
        await delivery.ack()
        await subscription.close()
    finally:
        await adapter.close()


async def test_postgres_tls_options_reach_the_driver(postgres_url: str) -> None:
    # tls_verify=false is sslmode=require: encrypted, server not verified. A server
    # without TLS refuses it (asyncpg says so); one with TLS (Debian's default
    # snakeoil certificate) shows the connection as ssl in pg_stat_ssl.
    adapter = adapter_from_url(url_with(postgres_url, tls_verify="false"))
    assert "sslmode=require" in adapter.settings.database_url  # type: ignore[attr-defined]
    base = postgres_url.replace("postgres://", "postgresql://", 1)
    server_has_tls = await _server_has_tls(base)
    try:
        await adapter.connect()
    except Exception as exc:
        assert not server_has_tls, f"TLS to a TLS server failed: {exc}"
        assert "SSL" in str(exc) or "ssl" in str(exc)
        return
    try:
        assert server_has_tls
        hub = adapter.hub  # type: ignore[attr-defined]
        async with hub.db.transaction() as tx:
            assert (
                await tx.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                is True
            )
    finally:
        await adapter.close()


async def _server_has_tls(url: str) -> bool:
    connection = await asyncpg.connect(url.split("?")[0])
    try:
        return str(await connection.fetchval("SHOW ssl")) == "on"
    finally:
        await connection.close()
