"""`eventbus run --metrics-port` serves eventbus's own instruments: the bus it runs is
counted without the service asking, alone and with `--workers 2`, where the supervisor's
/metrics adds the workers' figures up (prometheus-client's multiprocess mode: counters
summed, in-flight summed over live workers). On sqlite:// (a file every process shares),
so no broker is needed."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eventbus import Event, EventBus
from tests.test_cli_ops import Run, free_port, until_answer

TOPIC = "cli-metrics-orders"
LABELS = {"topic": TOPIC, "group": "billing", "type": "cli-metrics.booked"}

SERVICE = """
    import asyncio
    import os
    from pathlib import Path

    from eventbus import Event, EventBus

    class Booked(Event, type="cli-metrics.booked", topic="cli-metrics-orders"):
        n: int

    bus = EventBus.from_env(source="cli-metrics", prefetch_per_worker=4)
    HERE = Path(__file__).parent

    @bus.subscribe(Booked, group="billing", concurrency=1)
    async def bill(event: Booked) -> None:
        (HERE / "handled").mkdir(exist_ok=True)
        (HERE / "handled" / f"{os.getpid()}-{event.n}").touch()
        while not (HERE / "release").exists():  # held until the test has seen in-flight
            await asyncio.sleep(0.02)
"""


class Booked(Event, type="cli-metrics.booked", topic=TOPIC):
    n: int


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    (tmp_path / "metrics_svc.py").write_text(textwrap.dedent(SERVICE))
    yield tmp_path, {"EVENTBUS_URL": f"sqlite:///{tmp_path / 'broker.db'}"}


def samples(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def until_sample(
    port: int, name: str, labels: dict[str, str], expected: float, timeout: float = 30.0
) -> None:
    key = (name, frozenset(labels.items()))
    deadline = time.monotonic() + timeout
    while (seen := samples(port).get(key)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} was {seen}, not {expected}, after {timeout}s")
        time.sleep(0.1)


def publish(url: str, count: int) -> None:
    async def send() -> None:
        async with EventBus(url, source="cli-metrics-test") as bus:
            await bus.publish_many([Booked(n=n) for n in range(count)])

    asyncio.run(send())


def test_run_with_a_metrics_port_counts_the_bus_it_runs(
    service: tuple[Path, dict[str, str]],
) -> None:
    here, env = service
    (here / "release").touch()
    health, metrics = free_port(), free_port()
    run = Run(
        here,
        "metrics_svc:bus",
        "--health-port",
        str(health),
        "--metrics-port",
        str(metrics),
        "--probe-host",
        "127.0.0.1",
        env=env,
    )
    try:
        until_answer(health, "/readyz")
        publish(env["EVENTBUS_URL"], 5)
        until_sample(metrics, "eventbus_handled_total", {**LABELS, "outcome": "success"}, 5)
        assert (
            samples(metrics)[
                ("eventbus_in_flight", frozenset({"topic": TOPIC, "group": "billing"}.items()))
            ]
            == 0
        )
        assert run.stop() == 0
    finally:
        run.kill()


def test_two_workers_metrics_add_up_on_the_supervisors_scrape(
    service: tuple[Path, dict[str, str]],
) -> None:
    here, env = service
    health, metrics = free_port(), free_port()
    run = Run(
        here,
        "metrics_svc:bus",
        "--workers",
        "2",
        "--health-port",
        str(health),
        "--metrics-port",
        str(metrics),
        "--probe-host",
        "127.0.0.1",
        env=env,
    )
    try:
        until_answer(health, "/readyz", timeout=60)
        publish(env["EVENTBUS_URL"], 20)
        subscription = {"topic": TOPIC, "group": "billing"}
        # Each worker runs one handling at a time and holds it: in flight is one per
        # worker, summed over the live ones.
        until_sample(metrics, "eventbus_in_flight", subscription, 2)
        until_sample(metrics, "eventbus_prefetch_limit", subscription, 8)
        (here / "release").touch()
        until_sample(metrics, "eventbus_handled_total", {**LABELS, "outcome": "success"}, 20)
        until_sample(metrics, "eventbus_in_flight", subscription, 0)
        handlers = {name.split("-")[0] for name in (p.name for p in (here / "handled").iterdir())}
        assert len(handlers) == 2  # both workers handled some: the scrape is their sum
        scraped = samples(metrics)
        assert scraped[("eventbus_handler_duration_seconds_count", frozenset(LABELS.items()))] == 20
        assert run.stop() == 0
    finally:
        run.kill()
