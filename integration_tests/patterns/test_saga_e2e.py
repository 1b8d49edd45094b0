"""End to end: the order saga's three services as separate processes on a real broker,
state and outboxes on PostgreSQL, one killed with SIGKILL at random moments and
restarted. Afterwards no order is half-done and every compensation (refund) was
applied exactly once. On memory the same services run in this process.

The random choices come from one seed, printed on failure (EVENTBUS_SAGA_SEED
replays it).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import pytest

from eventbus.patterns.outbox import Outbox
from eventbus.patterns.sql import Database
from examples.order_saga import durable
from examples.order_saga.events import OrderLine
from integration_tests import harness

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
ORDERS = 6
FAILING = {1, 4}  # these orders ask for a lamp (none in stock): refunded and cancelled
BROKERS = ["kafka", "rabbitmq", "nats", "redis", "sqs"]
STEPS = {
    "order-service": ["complete", "cancel"],
    "payment-service": ["charge"],
    "inventory-service": ["reserve"],
}


def _lines(i: int) -> list[OrderLine]:
    if i in FAILING:
        return [OrderLine(sku="lamp", quantity=1, unit_price_cents=4500)]
    return [OrderLine(sku="book", quantity=2, unit_price_cents=1000)]


def broker_url(name: str) -> str:
    """The broker's URL, with redelivery of unacknowledged messages made quick."""
    endpoint = harness.require(name)
    url = harness.client_url(endpoint)
    join = "&" if "?" in url else "?"
    if name == "kafka" and endpoint.flavour != "tansu":
        # A killed member holds its partitions until its session expires: keep that
        # short (Apache Kafka's minimum session timeout is 6 s by default).
        return f"{url}{join}session_timeout=6&heartbeat_interval=1"
    if name == "nats":
        return f"{url}{join}ack_wait=2"
    if name == "redis":
        parts = urlsplit(url)
        url = urlunsplit(parts._replace(scheme="redis+streams"))
        return f"{url}{join}claim_idle=1.5&claim_interval=0.2"
    if name == "sqs":
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        return f"{url}{join}wait_seconds=1&visibility_timeout=3"
    return url


class Services:
    """The three service processes: started, killed, restarted when they die."""

    def __init__(self, env: dict[str, str], logs: Path, rng: random.Random) -> None:
        self.env, self.logs, self.rng = env, logs, rng
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.files: list[IO[bytes]] = []
        self.kills = 0
        self.crashes = 0
        self.crashes_planned: dict[str, dict[str, int]] = {}

    def fired(self, name: str, step: str) -> bool:
        """Whether ``name`` killed itself after a commit of ``step`` (its log says so)."""
        log = self.logs / f"{name}.log"
        return log.exists() and f" of {step}" in log.read_text()

    def start(self, name: str) -> None:
        env = dict(self.env)
        # A crash not yet fired is armed again in the restarted process.
        crashes = {
            step: n
            for step, n in self.crashes_planned.get(name, {}).items()
            if not self.fired(name, step)
        }
        if crashes:
            env["ORDER_SAGA_CRASH"] = ",".join(f"{step}:{n}" for step, n in crashes.items())
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.files.append(log)
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "examples.order_saga.durable", name],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            self.kills += 1
        else:
            self.crashes += 1  # it had killed itself (ORDER_SAGA_CRASH)
        self.start(name)

    def revive(self) -> None:
        """Restart every process that died (the ones that crashed themselves)."""
        for name, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self.crashes += 1
                self.start(name)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for log in self.files:
            log.close()

    def output(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(self.logs.glob("*.log"))
        )


async def _wait_ready(db: Database, services: Services, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        services.revive()
        async with db.transaction() as tx:
            ready = dict(await tx.fetch("SELECT service, pid FROM ready"))
        if all(ready.get(name) == proc.pid for name, proc in services.procs.items()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"services not ready in {timeout}s\n{services.output()}")


async def _settled(db: Database) -> tuple[bool, dict[str, str]]:
    async with db.transaction() as tx:
        status = dict(await tx.fetch("SELECT order_id, status FROM orders"))
        unsent = 0
        for name in durable.SERVICES:
            unsent += int(
                await tx.fetchval(
                    f"SELECT count(*) FROM {durable.outbox_table(name)} WHERE sent_at IS NULL"
                )
            )
    done = all(s in ("completed", "cancelled") for s in status.values())
    return done and unsent == 0, status


async def check_final_state(db: Database, order_ids: list[str], note: str) -> None:
    """No order half-done; every charge, reservation and refund applied exactly once."""
    async with db.transaction() as tx:
        status = dict(await tx.fetch("SELECT order_id, status FROM orders"))
        charges = dict(await tx.fetch("SELECT order_id, count(*) FROM charges GROUP BY order_id"))
        refunds = dict(await tx.fetch("SELECT order_id, count(*) FROM refunds GROUP BY order_id"))
        reserved = {r[0] for r in await tx.fetch("SELECT order_id FROM reservations")}
        books = await tx.fetchval("SELECT on_hand FROM stock WHERE sku = 'book'")
    for i, order_id in enumerate(order_ids):
        want = "cancelled" if i in FAILING else "completed"
        assert status[order_id] == want, f"{order_id}: {status[order_id]} ({note})"
        assert charges.get(order_id) == 1, f"{order_id} charged {charges.get(order_id)}x"
        assert refunds.get(order_id, 0) == (1 if i in FAILING else 0), (
            f"{order_id} refunded {refunds.get(order_id, 0)}x ({note})"
        )
        assert (order_id in reserved) == (i not in FAILING), f"{order_id} reservation ({note})"
    completed = ORDERS - len(FAILING)
    assert books == durable.STOCK["book"] - 2 * completed, f"book stock {books} ({note})"


async def _place_all(db: Database, url: str, run: str) -> list[str]:
    from eventbus import EventBus

    outbox = Outbox(db, table=durable.outbox_table("order-service"))
    front = EventBus.from_url(
        url, source="order-front-door", publish_middleware=[outbox.middleware]
    )
    order_ids = [f"o{i}-{run}" for i in range(ORDERS)]
    for i, order_id in enumerate(order_ids):
        await durable.place_order(db, outbox, front, run, order_id, _lines(i))
    return order_ids


@pytest.mark.asyncio
@pytest.mark.parametrize("broker", BROKERS)
async def test_order_saga_survives_sigkill(broker: str, postgres_url: str, tmp_path: Path) -> None:
    url = broker_url(broker)
    seed = int(os.environ.get("EVENTBUS_SAGA_SEED") or random.randrange(10**6))
    rng = random.Random(seed)
    run = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "EVENTBUS_URL": url,
        "ORDER_SAGA_DATABASE_URL": postgres_url,
        "ORDER_SAGA_RUN": run,
        "PYTHONPATH": str(ROOT),
        # SQS keeps no history for a new queue; the services subscribe before any order.
        "ORDER_SAGA_START_FROM": "latest" if broker == "sqs" else "earliest",
    }
    services = Services(env, tmp_path, rng)
    async with await Database.connect(postgres_url) as db:
        await durable.create_schema(db)
        # The payment service dies right after committing its first refund (the
        # compensation), before the ack; one more service at a random step of its own.
        crashes: dict[str, dict[str, int]] = {"payment-service": {"refund": 1}}
        crasher = rng.choice(durable.SERVICES)
        step = rng.choice(STEPS[crasher])
        crashes.setdefault(crasher, {})[step] = rng.randint(1, 2 if step == "cancel" else 3)
        services.crashes_planned = crashes
        for name in durable.SERVICES:
            services.start(name)
        try:
            await _wait_ready(db, services, 60)
            order_ids = await _place_all(db, url, run)
            # And another, at random moments, from outside.
            for _ in range(2):
                await asyncio.sleep(rng.uniform(0.2, 1.5))
                services.kill(rng.choice(durable.SERVICES))
            deadline = time.monotonic() + 90
            done = False
            while time.monotonic() < deadline and not done:
                services.revive()
                done, status = await _settled(db)
                await asyncio.sleep(0.2)
            note = (
                f"seed {seed}, {broker}, crashes {crashes}, {services.kills} kills, "
                f"{services.crashes} self-crashes"
            )
            assert done, f"orders not settled: {status} ({note})\n{services.output()}"
            await check_final_state(db, order_ids, note)
            # The chaos happened: processes really died mid-flow.
            assert services.fired("payment-service", "refund"), note
            assert services.kills + services.crashes >= 2, note
            print(note)
        finally:
            services.stop()


@pytest.mark.asyncio
async def test_order_saga_on_memory_with_postgres_state(postgres_url: str) -> None:
    url, run = f"memory://saga-e2e-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:8]
    async with await Database.connect(postgres_url) as db:
        await durable.create_schema(db)
        services = [durable.build(name, url, db, run) for name in durable.SERVICES]
        for service in services:
            await service.bus.start()
            await service.relay.start()
        try:
            order_ids = await _place_all(db, url, run)
            deadline = time.monotonic() + 20
            done, status = False, {}
            while time.monotonic() < deadline and not done:
                done, status = await _settled(db)
                await asyncio.sleep(0.05)
            assert done, status
            await check_final_state(db, order_ids, "memory")
        finally:
            for service in services:
                await service.relay.stop()
                await service.bus.stop()
