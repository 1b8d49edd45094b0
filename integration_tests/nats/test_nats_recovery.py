"""A group's JetStream consumer gone while its members pull (issue #18, defect 1).

nats-server answers a pull request to a deleted consumer with nothing, so only
the members' own look notices: the consumer is created again where the group
was, and nothing published meanwhile is skipped, through an EventBus with
handlers, whether an operator deleted it or a ``storage=memory`` server crashed
and restarted. ``backlog()`` (the bus's stall watch) counts what waits and says
when the consumer is gone.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import nats
import pytest
from eventbus_nats import NatsAdapter

from eventbus import Event, EventBus
from eventbus.adapter import SubscribeOptions
from eventbus.envelope import Envelope
from eventbus.errors import TopicNotFoundError
from integration_tests import harness
from integration_tests.nats.servers import crash, private_server
from integration_tests.nats.support import run, until

pytestmark = [pytest.mark.broker("nats"), pytest.mark.timeout(120)]


def job_class(topic: str) -> type[Event]:
    class Job(Event, type=f"test.{topic}", topic=topic):
        n: int

    return Job


def test_consumer_deleted_underneath_is_created_again_where_the_group_was(
    nats_endpoint: harness.Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    """A "latest" group's consumer deleted while it works through a backlog: every
    message, those published while it was gone included, is handled, within a few
    seconds (no stall watch needed: stall_after is left at its 60 s)."""
    address = f"{nats_endpoint.host}:{nats_endpoint.port}"
    topic = f"nats.recovery.deleted.{uuid.uuid4().hex[:8]}"
    job = job_class(topic)

    async def scenario() -> None:
        bus = EventBus.from_url(f"nats://{address}", source="t", prefetch_per_worker=1)
        handled: set[int] = set()

        @bus.subscribe(job, group="workers")
        async def work(event: Any) -> None:
            await asyncio.sleep(0.1)
            handled.add(event.n)

        nc = await nats.connect(f"nats://{address}")
        async with bus:
            stream = bus.adapter._provisioner.stream_name(topic)  # type: ignore[attr-defined]
            await bus.publish_many([job(n=i) for i in range(20)])
            await until(lambda: len(handled) >= 2, 10, "the first messages")
            await nc.jetstream().delete_consumer(stream, "workers")
            deleted = time.monotonic()
            await bus.publish_many([job(n=i) for i in range(20, 25)])  # while it is gone
            await until(lambda: len(handled) == 25, 20, "every message after the deletion")
            took = time.monotonic() - deleted
            await bus.publish(job(n=25))
            await until(lambda: 25 in handled, 10, "a message after the re-creation")
            assert (await bus.health()).ok
        await nc.close()
        assert took < 10, f"recovered after {took:.1f}s"

    with caplog.at_level(logging.WARNING, logger="eventbus.nats"):
        run(scenario())
    said = [r.getMessage() for r in caplog.records]
    assert any("was gone" in m and "created again from stream sequence" in m for m in said), said


def test_memory_storage_server_crash_and_restart(caplog: pytest.LogCaptureFixture) -> None:
    """storage=memory: the server is killed and started again (streams and consumers
    gone with it); the group consumes what is published afterwards."""
    topic = f"nats.recovery.memory.{uuid.uuid4().hex[:8]}"
    job = job_class(topic)

    async def scenario(server: Any) -> None:
        bus = EventBus.from_url(server.url + "?storage=memory", source="t")
        handled: list[int] = []

        @bus.subscribe(job, group="g")
        async def work(event: Any) -> None:
            handled.append(event.n)

        async with bus:
            await bus.publish(job(n=0))
            await until(lambda: handled == [0], 10, "the first message")
            await asyncio.to_thread(crash, server)
            await asyncio.to_thread(server.start)
            await until(lambda: bus.adapter.client.is_connected, 10, "the reconnect")
            await bus.publish(job(n=1))
            await until(lambda: 1 in handled, 15, "the message published after the restart")
            await bus.publish(job(n=2))
            await until(lambda: 2 in handled, 10, "one more")
        assert handled == [0, 1, 2]

    with private_server() as server, caplog.at_level(logging.WARNING, logger="eventbus.nats"):
        run(scenario(server))
    said = [r.getMessage() for r in caplog.records]
    assert any("re-created since the group was last seen" in m for m in said), said


def test_backlog_counts_what_waits_and_reports_a_missing_consumer(
    nats_endpoint: harness.Endpoint,
) -> None:
    """backlog() is the consumer's num_pending (plus the group route's): messages not
    yet sent to any member; TopicNotFoundError once the consumer is deleted."""
    url = f"nats://{nats_endpoint.host}:{nats_endpoint.port}"
    topic = f"nats-backlog-{uuid.uuid4().hex[:8]}"

    async def scenario() -> None:
        adapter = NatsAdapter(url)
        await adapter.connect()
        subscription = await adapter.subscribe(topic, SubscribeOptions(group="g", prefetch=1))
        assert await subscription.backlog() == 0
        await adapter.publish(
            topic, [Envelope.create(type="t", source="s", data=b"{}") for _ in range(3)]
        )
        await asyncio.sleep(0.5)  # the member takes one (its prefetch)
        assert await subscription.backlog() == 2
        await adapter.publish_to_group(
            topic, "g", [Envelope.create(type="t", source="s", data=b"{}")]
        )
        await asyncio.sleep(0.5)  # the route member takes it at once (its own prefetch)
        assert await subscription.backlog() == 2
        js = adapter.client.jetstream()
        await js.delete_consumer(adapter._provisioner.stream_name(topic), "g")
        with pytest.raises(TopicNotFoundError, match="is gone"):
            await subscription.backlog()
        await subscription.close()
        await adapter.close()

    run(scenario())
