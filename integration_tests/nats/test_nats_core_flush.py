"""Core NATS: a flush's PONG covers every command sent before it.

nats-py writes a flush's ``PING`` straight to the socket, while a ``SUB`` or ``PUB``
queued just before waits for the client's flusher task, which writes it in a later
turn of the loop. On a loaded machine that task runs late, the server answers the
``PING`` first, and a subscription ``start()`` reported ready is not on the server
yet: CI lost the first message published right after (at-most-once: nothing keeps
it). Here the flusher is made late on purpose (its writes of the commands under test
wait :data:`LATE` seconds) and the promises are checked through an ``EventBus``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from nats.aio.transport import TcpTransport

from eventbus import Event, EventBus
from integration_tests import harness
from integration_tests.nats.support import run

pytestmark = [pytest.mark.broker("nats"), pytest.mark.timeout(60)]

LATE = 5.0
"""Seconds nats-py's flusher task waits before it writes the commands under test (long,
so that a loaded machine's slowness is never mistaken for them)."""


def _from_flusher() -> bool:
    task = asyncio.current_task()
    return task is not None and task.get_coro().__qualname__.endswith("Client._flusher")


@pytest.fixture
def late_flusher(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bytes], None]]:
    """``late(b"SUB ")`` makes the flusher's writes that hold such a command land
    :data:`LATE` seconds late (a flusher task starved of the CPU); every other write
    goes out as it is made."""
    kinds: list[bytes] = []
    original = TcpTransport.writelines

    def writelines(self: TcpTransport, payload: Any) -> None:
        chunks = [bytes(chunk) for chunk in payload]
        if _from_flusher() and any(chunk.startswith(tuple(kinds)) for chunk in chunks):
            asyncio.get_running_loop().call_later(LATE, original, self, chunks)
            return
        original(self, chunks)

    monkeypatch.setattr(TcpTransport, "writelines", writelines)
    yield kinds.append


def _buses(
    endpoint: harness.Endpoint,
) -> tuple[type[Event], EventBus, EventBus, asyncio.Queue[Event]]:
    """An event class on a topic of its own, a publishing bus, and a subscribing bus
    (its own connection) whose handler puts each event it gets on the queue."""
    topic = f"nats.core.flush.{uuid.uuid4().hex[:8]}"

    class Note(Event, type=f"test.{topic}", topic=topic):
        n: int

    url = f"nats+core://{endpoint.host}:{endpoint.port}"
    publisher, subscriber = EventBus(url, source="p"), EventBus(url, source="s")
    got: asyncio.Queue[Event] = asyncio.Queue()

    @subscriber.subscribe(Note, group="g")
    async def handle(event: Note) -> None:
        await got.put(event)

    return Note, publisher, subscriber, got


def test_a_core_subscription_is_on_the_server_when_start_returns(
    nats_endpoint: harness.Endpoint, late_flusher: Callable[[bytes], None]
) -> None:
    """A publisher already connected publishes the moment the subscriber's start()
    returns: the handler gets the event, although the flusher would send its SUB late."""
    late_flusher(b"SUB ")

    async def scenario() -> None:
        note, publisher, subscriber, got = _buses(nats_endpoint)
        async with publisher, subscriber:
            await publisher.publish(note(n=1))
            event = await asyncio.wait_for(got.get(), LATE)
        assert event == note(n=1)

    run(scenario())


def test_a_core_publish_has_reached_the_server_when_it_returns(
    nats_endpoint: harness.Endpoint, late_flusher: Callable[[bytes], None]
) -> None:
    """publish() returns once the server has read the message (its PONG came after
    it), not while the message still waits in the client: a subscriber gets it well
    before the flusher would have sent it."""

    async def scenario() -> None:
        note, publisher, subscriber, got = _buses(nats_endpoint)
        async with subscriber, publisher:
            late_flusher(b"HPUB ")
            await publisher.publish(note(n=2))
            event = await asyncio.wait_for(got.get(), LATE / 2)
        assert event == note(n=2)

    run(scenario())
