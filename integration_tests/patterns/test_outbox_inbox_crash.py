"""The inbox under a real crash: the consumer process is SIGKILLed after its handler's
transaction committed and before the broker got the ack (RabbitMQ, PostgreSQL).
The broker redelivers to the restarted consumer, and the effect is applied once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from eventbus import Event, EventBus
from eventbus.patterns.sql import Database
from integration_tests.harness.endpoints import Endpoint

ROOT = Path(__file__).resolve().parents[2]

CONSUMER = textwrap.dedent("""
    import asyncio, os, signal, sys
    from eventbus import Context, Event, EventBus
    from eventbus.patterns import Inbox
    from eventbus.patterns.sql import Database, Transaction

    broker, db_url, topic, group, die = sys.argv[1:6]

    class Charged(Event, type="test.crash.charged", topic=topic, version=1):
        order_id: str

    async def main() -> None:
        db = await Database.connect(db_url)
        inbox = Inbox(db)
        await inbox.setup()
        bus = EventBus(broker, source="ledger")
        delivered = asyncio.Event()

        async def die_before_ack(ctx: Context, call_next) -> None:
            await call_next(ctx)  # the handler's transaction has committed
            if die == "1":
                os.kill(os.getpid(), signal.SIGKILL)
            delivered.set()

        @bus.subscribe(Charged, group=group, middleware=[die_before_ack])
        @inbox.handler
        async def book(event: Charged, ctx: Context, tx: Transaction) -> None:
            await tx.execute("UPDATE totals SET n = n + 1")
            await tx.execute("INSERT INTO runs (pid) VALUES ($1)", os.getpid())

        async with bus:
            print("ready", flush=True)
            await asyncio.wait_for(delivered.wait(), 60)
        await db.close()

    asyncio.run(main())
""")


class Charged(Event, type="test.crash.charged", topic="test-crash-unused", version=1):
    order_id: str


async def start_consumer(script: Path, *args: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(script), *args, env=env, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 60)
    assert line.strip() == b"ready", line
    return child


@pytest.mark.asyncio
async def test_a_consumer_killed_before_its_ack_applies_the_effect_once(
    rabbitmq_endpoint: Endpoint, postgres_url: str, tmp_path: Path
) -> None:
    rabbitmq = rabbitmq_endpoint
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    topic, group = f"crash-{uuid.uuid4().hex[:8]}", f"ledger-{uuid.uuid4().hex[:8]}"
    async with await Database.connect(postgres_url) as db:
        async with db.transaction() as tx:
            await tx.execute("CREATE TABLE totals (n INTEGER NOT NULL)")
            await tx.execute("INSERT INTO totals VALUES (0)")
            await tx.execute("CREATE TABLE runs (pid INTEGER NOT NULL)")
        args = (rabbitmq.url, postgres_url, topic, group)
        first = await start_consumer(script, *args, "1")
        async with EventBus(rabbitmq.url, source="payments") as bus:
            await bus.publish(Charged(order_id="o-1"), topic=topic)
        assert await asyncio.wait_for(first.wait(), 60) == -signal.SIGKILL
        second = await start_consumer(script, *args, "0")  # waits for the redelivery
        assert await asyncio.wait_for(second.wait(), 60) == 0
        async with db.transaction() as tx:
            assert await tx.fetchval("SELECT n FROM totals") == 1
            assert [r[0] for r in await tx.fetch("SELECT pid FROM runs")] == [first.pid]
