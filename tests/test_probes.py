"""The probes: ``/livez`` answers while the loop runs; ``/readyz`` is ready only with every
subscription attached, the broker answering and none stalled, and turns unready when a
subscription stalls or its connection goes half-open, ready again when it recovers;
``/metrics`` serves prometheus-client's default registry."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import Counter

from eventbus import EventBus, MemoryAdapter
from eventbus._memory_broker import MemoryBroker
from eventbus.adapter import Delivery, SubscribeOptions, Subscription
from eventbus.errors import ConfigurationError
from eventbus.probes import LIVEZ, METRICS, READYZ, serve_probes
from tests.bus_support import Collector, OrderPlaced, memory_url, run


async def get(port: int, path: str, method: str = "GET") -> httpx.Response:
    async with httpx.AsyncClient(timeout=5.0) as client:
        return await client.request(method, f"http://127.0.0.1:{port}{path}")


async def until_status(port: int, path: str, status: int, timeout: float = 10.0) -> dict:
    """Poll ``path`` until it answers ``status``; returns the JSON body then."""

    async def poll() -> dict:
        while True:
            answer = await get(port, path)
            if answer.status_code == status:
                return answer.json()  # type: ignore[no-any-return]
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), timeout)


def test_livez_answers_and_readyz_waits_for_the_start() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url())
        inbox = Collector[OrderPlaced]()

        @bus.subscribe(OrderPlaced, group="billing")
        async def handle(event: OrderPlaced) -> None:
            inbox.add(event)

        async with serve_probes(bus, health_port=0, host="127.0.0.1") as probes:
            port = probes.health_port
            assert port
            assert (await get(port, LIVEZ)).status_code == 200
            unready = await get(port, READYZ)
            assert unready.status_code == 503
            assert "not started" in unready.json()["detail"]
            async with bus:
                ready = await until_status(port, READYZ, 200)
                assert ready["ok"] is True
                assert [(s["topic"], s["group"], s["state"]) for s in ready["subscriptions"]] == [
                    (OrderPlaced.default_topic(), "billing", "running")
                ]
            assert (await get(port, READYZ)).status_code == 503

    run(scenario)


def test_readyz_turns_unready_on_a_half_open_connection_and_ready_after_it() -> None:
    """The memory broker's freeze fault: the subscription notices the half-open
    connection, /readyz says so; after the thaw it subscribes again and /readyz is ready."""

    async def scenario() -> None:
        url = memory_url()
        bus = EventBus(url, stall_after=0.5)

        @bus.subscribe(OrderPlaced, group="billing")
        async def handle(event: OrderPlaced) -> None:
            pass

        broker = MemoryBroker.named(url.removeprefix("memory://"))
        async with bus, serve_probes(bus, health_port=0, host="127.0.0.1") as probes:
            port = probes.health_port
            await until_status(port, READYZ, 200)
            await broker.freeze()
            unready = await until_status(port, READYZ, 503)
            assert unready["ok"] is False and unready["detail"], unready
            await broker.thaw()
            await until_status(port, READYZ, 200)

    run(scenario, timeout=30)


class _Deaf(Subscription):
    """A subscription whose pulls go nowhere while its broker counts the group's messages
    (a consumer deleted underneath)."""

    def __init__(self, real: Subscription) -> None:
        self.real = real

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        await asyncio.Event().wait()
        yield  # type: ignore[unreachable]

    async def close(self) -> None:
        await self.real.close()

    async def backlog(self) -> int | None:
        return await self.real.backlog()


class _DeafFirst(MemoryAdapter):
    """Its first subscription goes deaf; the bus's re-subscribe gets a working one."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.subscribed = 0
        self.cure = asyncio.Event()

    async def subscribe(self, topic: str, options: SubscribeOptions) -> Subscription:
        self.subscribed += 1
        if self.subscribed > 1:
            await self.cure.wait()  # stays stalled until the test lets it recover
        real = await super().subscribe(topic, options)
        return _Deaf(real) if self.subscribed == 1 else real


def test_readyz_turns_unready_while_a_subscription_is_stalled() -> None:
    async def scenario() -> None:
        adapter = _DeafFirst(memory_url())
        bus = EventBus(adapter, stall_after=0.3)
        inbox = Collector[OrderPlaced]()

        @bus.subscribe(OrderPlaced, group="billing")
        async def handle(event: OrderPlaced) -> None:
            inbox.add(event)

        async with bus, serve_probes(bus, health_port=0, host="127.0.0.1") as probes:
            port = probes.health_port
            await bus.publish(OrderPlaced(order_id="1"))
            unready = await until_status(port, READYZ, 503)
            (sub,) = unready["subscriptions"]
            assert sub["state"] == "stalled" and sub["backlog"] == 1, unready
            assert "stalled" in unready["detail"]
            adapter.cure.set()
            await inbox.wait_count(1)
            await until_status(port, READYZ, 200)

    run(scenario, timeout=30)


def test_a_broker_whose_health_check_hangs_is_unready_in_bounded_time() -> None:
    class Hanging(MemoryAdapter):
        async def health(self):  # type: ignore[no-untyped-def]
            await asyncio.Event().wait()

    async def scenario() -> None:
        bus = EventBus(Hanging(memory_url()))
        async with (
            bus,
            serve_probes(bus, health_port=0, host="127.0.0.1", check_timeout=0.3) as probes,
        ):
            answer = await get(probes.health_port, READYZ)
            assert answer.status_code == 503
            assert "did not answer within 0.3s" in answer.json()["detail"]
            assert (await get(probes.health_port, LIVEZ)).status_code == 200

    run(scenario)


def test_unknown_paths_and_methods_are_refused() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url())
        async with serve_probes(bus, health_port=0, host="127.0.0.1") as probes:
            assert (await get(probes.health_port, "/nope")).status_code == 404
            assert (await get(probes.health_port, LIVEZ, "POST")).status_code == 405
            head = await get(probes.health_port, LIVEZ, "HEAD")
            assert head.status_code == 200 and head.content == b""

    run(scenario)


def test_metrics_serves_the_default_registry() -> None:
    name = f"probe_test_{uuid.uuid4().hex[:8]}"
    counter = Counter(name, "A counter some other module registered.")
    counter.inc(3)

    async def scenario() -> None:
        bus = EventBus(memory_url())
        async with serve_probes(bus, metrics_port=0, host="127.0.0.1") as probes:
            assert probes.health_port is None and probes.metrics_port
            answer = await get(probes.metrics_port, METRICS)
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/plain; version=")
            assert f"{name}_total 3.0" in answer.text
            assert (await get(probes.metrics_port, READYZ)).status_code == 404

    run(scenario)


def test_one_port_may_serve_the_probes_and_the_metrics() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url())
        async with serve_probes(bus, health_port=0, metrics_port=0, host="127.0.0.1") as probes:
            assert probes.health_port != probes.metrics_port
        port = _free_port()
        async with serve_probes(
            bus, health_port=port, metrics_port=port, host="127.0.0.1"
        ) as probes:
            assert probes.health_port == probes.metrics_port == port
            assert (await get(port, METRICS)).status_code == 200
            assert (await get(port, LIVEZ)).status_code == 200

    run(scenario)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_taken_port_is_refused_with_what_to_do() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url())
        async with serve_probes(bus, health_port=0, host="127.0.0.1") as first:
            with pytest.raises(ConfigurationError, match=f"--health-port {first.health_port}"):
                async with serve_probes(bus, health_port=first.health_port, host="127.0.0.1"):
                    pass

    run(scenario)


def test_readyz_body_is_json() -> None:
    async def scenario() -> None:
        bus = EventBus(memory_url())
        async with bus, serve_probes(bus, health_port=0, host="127.0.0.1") as probes:
            answer = await get(probes.health_port, READYZ)
            assert answer.headers["content-type"] == "application/json"
            assert json.loads(answer.content)["ok"] is True

    run(scenario)
