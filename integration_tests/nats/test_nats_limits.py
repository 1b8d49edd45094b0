"""The server's real size limits, learnt at connect (issue #18, defect 4).

A private nats-server with ``max_payload: 2048``: the adapters report it in
``capabilities.max_message_bytes`` and refuse a larger message before sending it
(``MessageTooLargeError`` at once, never a connection error retried as an
outage), so a dead letter over the limit is shrunk and a failing handler is not
re-run forever. On JetStream a stream's own ``max_msg_size`` is checked too.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine
from typing import Any

import nats
import pytest
from eventbus_nats import NatsAdapter
from nats.js.api import StreamConfig

from eventbus import Event, EventBus
from eventbus.deadletters import dlq_topic
from eventbus.envelope import Envelope
from eventbus.errors import MessageTooLargeError
from eventbus.middleware.retry import RetryPolicy
from integration_tests import harness
from integration_tests.nats.servers import private_server

pytestmark = [pytest.mark.broker("nats"), pytest.mark.timeout(120)]


def run(scenario: Coroutine[Any, Any, None], timeout: float = 60.0) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout))


@pytest.mark.parametrize("scheme", ["nats", "nats+core"])
def test_server_max_payload_is_the_limit(scheme: str) -> None:
    """Learnt at connect: an oversize publish is MessageTooLargeError at once, a
    failing handler's dead letter over the limit is shrunk (the handler runs
    max_attempts times, not forever)."""
    topic = f"nats.limits.{uuid.uuid4().hex[:8]}"

    class Big(Event, type=f"test.{topic}", topic=topic):
        blob: str

    async def scenario(url: str) -> None:
        bus = EventBus.from_url(
            url,
            source="t",
            publish_timeout=3.0,
            retry=RetryPolicy(max_attempts=2, initial_delay=0.05),
        )
        runs: list[float] = []

        @bus.subscribe(Big, group="g")
        async def fail(event: Big) -> None:
            runs.append(time.monotonic())
            raise RuntimeError("x" * 900)

        nc = await nats.connect(url.replace("nats+core://", "nats://"))
        letters: list[int] = []
        lettered = asyncio.Event()

        async def on_letter(msg: Any) -> None:
            letters.append(len(msg.data) + len(str(msg.headers)))
            lettered.set()

        await nc.subscribe(dlq_topic(topic, "g"), cb=on_letter)
        async with bus:
            assert bus.adapter.capabilities.max_message_bytes == 2048
            started = time.monotonic()
            with pytest.raises(MessageTooLargeError) as raised:
                await bus.publish(Big(blob="y" * 3000))
            assert time.monotonic() - started < 1.0
            assert "2048" in str(raised.value)
            await bus.publish(Big(blob="z" * 1200))  # fits; its handler fails
            await asyncio.wait_for(lettered.wait(), 15)
            await asyncio.sleep(1.5)  # a handler re-run forever would run again here
        await nc.close()
        assert len(runs) == 2, f"handler ran {len(runs)} times"
        assert len(letters) == 1, letters

    with private_server(max_payload=2048) as server:
        run(scenario(server.url.replace("nats://", f"{scheme}://")))


def test_stream_max_msg_size_is_checked_before_sending(nats_endpoint: harness.Endpoint) -> None:
    """A stream an operator created with a smaller max_msg_size: a batch with one
    message over it is refused before anything is sent, naming that limit."""

    async def scenario() -> None:
        url = f"nats://{nats_endpoint.host}:{nats_endpoint.port}"
        topic = f"nats-limits-{uuid.uuid4().hex[:10]}"
        nc = await nats.connect(url)
        await nc.jetstream().add_stream(
            StreamConfig(name=f"EB_{topic}", subjects=[topic], max_msg_size=1000)
        )
        adapter = NatsAdapter(url)
        await adapter.connect()
        small = Envelope.create(type="t", source="s", data=b"{}")
        big = Envelope.create(type="t", source="s", data=b'"%s"' % (b"x" * 1500))
        with pytest.raises(MessageTooLargeError) as raised:
            await adapter.publish(topic, [small, big])
        assert "1000" in str(raised.value) and big.id in str(raised.value)
        assert await adapter.read(topic) == []
        await adapter.publish(topic, [small])
        assert [r.envelope.id for r in await adapter.read(topic) if r.envelope] == [small.id]
        await nc.jetstream().delete_stream(f"EB_{topic}")
        await adapter.close()
        await nc.close()

    run(scenario())
