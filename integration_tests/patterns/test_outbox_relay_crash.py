"""The relay under a real crash: its process is SIGKILLed after RabbitMQ confirmed a
batch and before the rows were marked sent (PostgreSQL outbox). Its claim on them
lapses after its lease, the restarted relay publishes them again, and the consumer's
idempotency middleware runs the handler once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from eventbus import Context, Event, EventBus
from eventbus.middleware.idempotency import MemoryIdempotencyStore
from eventbus.patterns.outbox import Outbox
from eventbus.patterns.sql import Database
from integration_tests.harness.endpoints import Endpoint
from tests.bus_support import until as wait_until

ROOT = Path(__file__).resolve().parents[2]

RELAY = textwrap.dedent("""
    import asyncio, os, signal, sys
    from eventbus import EventBus
    from eventbus.patterns.outbox import Outbox, OutboxRelay
    from eventbus.patterns.sql import Database

    broker, db_url, table, die = sys.argv[1:5]

    async def main() -> None:
        db = await Database.connect(db_url)
        outbox = Outbox(db, table=table)
        bus = EventBus(broker, source="relay")
        real = bus.adapter.publish

        async def publish(topic, envelopes):
            await real(topic, envelopes)  # confirmed by the broker
            if die == "1":
                os.kill(os.getpid(), signal.SIGKILL)  # before the rows are marked sent

        bus.adapter.publish = publish
        async with bus:
            relay = OutboxRelay(outbox, bus, lease=1.0)
            # The killed relay's claim holds the rows until its lease is over.
            for _ in range(600):
                await relay.publish_pending()
                if not await outbox.pending():
                    break
                await asyncio.sleep(0.01)
        await db.close()

    asyncio.run(main())
""")


class Charged(Event, type="test.relay-crash.charged", topic="test-relay-crash", version=1):
    order_id: str


async def run_relay(script: Path, *args: str) -> int:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    child = await asyncio.create_subprocess_exec(sys.executable, str(script), *args, env=env)
    return await asyncio.wait_for(child.wait(), 60)


@pytest.mark.asyncio
async def test_a_relay_killed_before_marking_sent_republishes_and_the_consumer_dedupes(
    rabbitmq_endpoint: Endpoint, postgres_url: str, tmp_path: Path
) -> None:
    script = tmp_path / "relay.py"
    script.write_text(RELAY)
    topic = f"relay-crash-{uuid.uuid4().hex[:8]}"
    deliveries: Counter[str] = Counter()
    handled: list[str] = []

    async def count(ctx: Context, call_next: Callable[[Context], Awaitable[None]]) -> None:
        deliveries[ctx.envelope.id] += 1
        await call_next(ctx)

    async with await Database.connect(postgres_url) as db:
        outbox = Outbox(db, table="eventbus_outbox_crash")
        await outbox.setup()
        bus = EventBus(
            rabbitmq_endpoint.url, source="billing", publish_middleware=[outbox.middleware]
        )

        @bus.subscribe(
            topic,
            group=f"g-{uuid.uuid4().hex[:8]}",
            middleware=[count],
            idempotency=MemoryIdempotencyStore(),
        )
        async def charge(event: Charged) -> None:
            handled.append(event.order_id)

        async with bus:
            async with outbox.unit_of_work():
                for i in range(3):
                    await bus.publish(Charged(order_id=f"o-{i}"), topic=topic, key=f"o-{i}")
            args = (rabbitmq_endpoint.url, postgres_url, outbox.table)
            assert await run_relay(script, *args, "1") == -signal.SIGKILL
            await wait_until(lambda: sum(deliveries.values()) == 3, 30)
            assert await outbox.pending() == 3  # published, never marked
            assert await run_relay(script, *args, "0") == 0
            await wait_until(lambda: sum(deliveries.values()) == 6, 30)
            await asyncio.sleep(0.2)
        assert sorted(handled) == ["o-0", "o-1", "o-2"]
        assert set(deliveries.values()) == {2}
        assert await outbox.pending() == 0
