"""The NATS connection as a service sees it: how it fails to start, how it ends,
how it notices a path that went silent (issue #18, defect 7 and the half-open class)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import pytest
from eventbus_nats import NatsAdapter, NatsCoreAdapter

from eventbus import Event, EventBus
from eventbus.errors import BrokerConnectionError
from integration_tests import harness
from integration_tests.harness import processes
from integration_tests.nats.support import run, until

pytestmark = [pytest.mark.broker("nats"), pytest.mark.timeout(120)]

TAG = uuid.uuid4().hex[:8]


class Tick(Event, type=f"test.nats.conn.tick.{TAG}", topic=f"nats.conn.{TAG}"):
    n: int


@pytest.mark.parametrize("scheme", ["nats", "nats+core"])
def test_wrong_port_fails_at_once_saying_refused(scheme: str) -> None:
    """#18 defect 7: nothing listens on the port: bus.start() fails within a second
    with one line saying the connection was refused (not a bare TimeoutError after
    the whole connect_timeout), the password masked."""
    port = processes.free_port()

    async def scenario() -> None:
        bus = EventBus.from_url(f"{scheme}://bob:hunter2@127.0.0.1:{port}", source="t")
        started = time.monotonic()
        with pytest.raises(BrokerConnectionError) as raised:
            await bus.start()
        took = time.monotonic() - started
        text = str(raised.value)
        assert took < 1.5, f"took {took:.1f}s: {text}"
        assert "refused" in text.lower(), text
        assert "hunter2" not in text and f":{port}" in text
        assert "TimeoutError: )" not in text and "\n" not in text
        await bus.stop()

    run(scenario())


@pytest.mark.parametrize("scheme", ["nats", "nats+core"])
def test_clean_shutdown_logs_no_reconnect(
    nats_endpoint: harness.Endpoint, scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    """#18 defect 7: stopping a bus is not a lost connection: nothing says
    "lost its connection; reconnecting" and nothing above INFO is logged."""

    async def scenario() -> None:
        bus = EventBus.from_url(f"{scheme}://{nats_endpoint.host}:{nats_endpoint.port}", source="t")
        got = asyncio.Event()

        @bus.subscribe(Tick, group="g")
        async def on_tick(event: Tick) -> None:
            got.set()

        async with bus:
            await bus.publish(Tick(n=1))
            await asyncio.wait_for(got.wait(), 10)

    with caplog.at_level(logging.DEBUG, logger="eventbus"):
        run(scenario())
    said = [r.getMessage() for r in caplog.records if r.name.startswith("eventbus.nats")]
    assert not [m for m in said if "reconnecting" in m or "lost" in m], said
    assert not [
        r for r in caplog.records if r.levelno > logging.INFO and r.name.startswith("eventbus")
    ], caplog.records


def test_silent_endpoint_fails_within_connect_timeout() -> None:
    """An endpoint that accepts TCP and never speaks NATS: connect() fails with one
    line naming the silence within connect_timeout (+ slack)."""

    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            for adapter in (
                NatsAdapter(f"nats://127.0.0.1:{port}?connect_timeout=2"),
                NatsCoreAdapter(f"nats+core://127.0.0.1:{port}?connect_timeout=2"),
            ):
                started = time.monotonic()
                with pytest.raises(BrokerConnectionError) as raised:
                    await adapter.connect()
                took = time.monotonic() - started
                assert took < 3.5, took
                assert "did not answer" in str(raised.value), raised.value
                await adapter.close()
        finally:
            server.close()

    run(scenario())


@pytest.mark.parametrize("scheme", ["nats", "nats+core"])
def test_half_open_connection_replaced_within_the_declared_bound(
    nats_endpoint: harness.Endpoint, scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The path goes silent without closing (a frozen proxy): within the declared
    half_open_bound (ping_interval x (max_pings_out + 1), 6 s by default) the adapter
    has dropped the connection to reconnect, health says so meanwhile, and after the
    thaw what is published is handled."""

    async def scenario() -> None:
        proxy = harness.FaultProxy(nats_endpoint.host, nats_endpoint.port).start()
        topic = f"nats.conn.halfopen.{uuid.uuid4().hex[:8]}"

        class Beat(Event, type=f"test.{topic}", topic=topic):
            n: int

        try:
            bus = EventBus.from_url(f"{scheme}://127.0.0.1:{proxy.port}", source="t")
            got: list[int] = []

            @bus.subscribe(Beat, group="g")
            async def on_beat(event: Beat) -> None:
                got.append(event.n)

            async with bus:
                bound = bus.adapter.capabilities.half_open_bound
                assert bound == 6.0
                await bus.publish(Beat(n=0))
                await until(lambda: got == [0], 10, "the first beat")
                await proxy.freeze()
                frozen = time.monotonic()
                await until(
                    lambda: any("lost its connection" in r.getMessage() for r in caplog.records),
                    bound + 3,
                    "the lost connection to be logged",
                )
                noticed = time.monotonic() - frozen
                assert noticed <= bound + 1.5, f"noticed after {noticed:.1f}s (bound {bound}s)"
                assert not (await bus.adapter.health()).ok
                await proxy.thaw()
                deadline = time.monotonic() + 30
                while 1 not in got and time.monotonic() < deadline:
                    with contextlib.suppress(BrokerConnectionError):
                        await bus.publish(Beat(n=1))
                    await asyncio.sleep(0.5)
                assert 1 in got
        finally:
            proxy.stop()

    with caplog.at_level(logging.INFO, logger="eventbus.nats"):
        run(scenario(), timeout=90)


def test_a_late_pong_after_a_timed_out_health_check_keeps_the_connection_reading(
    nats_endpoint: harness.Endpoint,
) -> None:
    """health() on core NATS waits a second for a PONG; when the path was silent
    longer, the PONG arrives after the wait gave up. nats-py then resolves the
    cancelled wait, its read loop dies (InvalidStateError) and the connection reads
    nothing until the next stale-connection check: at-most-once, what arrives
    meanwhile is lost. The adapter's client drops such a PONG instead."""

    async def scenario() -> None:
        proxy = harness.FaultProxy(nats_endpoint.host, nats_endpoint.port).start()
        topic = f"nats.conn.latepong.{uuid.uuid4().hex[:8]}"

        class Note(Event, type=f"test.{topic}", topic=topic):
            n: int

        try:
            sub = EventBus.from_url(f"nats+core://127.0.0.1:{proxy.port}", source="s")
            pub = EventBus.from_url(
                f"nats+core://{nats_endpoint.host}:{nats_endpoint.port}", source="p"
            )
            got: list[int] = []

            @sub.subscribe(Note, group="g")
            async def on_note(event: Note) -> None:
                got.append(event.n)

            async with sub, pub:
                await proxy.freeze()
                assert not (await sub.adapter.health()).ok  # its PONG is held back
                await proxy.thaw()
                await asyncio.sleep(0.5)  # the late PONG arrives
                await pub.publish_many([Note(n=n) for n in range(5)])
                await until(lambda: len(got) == 5, 3, "five notes")
                assert (await sub.adapter.health()).ok
        finally:
            proxy.stop()

    run(scenario())
