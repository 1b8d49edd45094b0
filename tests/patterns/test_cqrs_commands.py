"""The command bus (one handler per command) and request/reply details on memory."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest

from eventbus import Command, Event, EventBus
from eventbus.errors import ConfigurationError
from eventbus.patterns.cqrs import CommandBus, DuplicateHandlerError, NoHandlerError
from eventbus.requests import RequestError, RequestFailedError

pytestmark = pytest.mark.asyncio


class Reserve(Command, type="cqrs-test.reserve", topic="cqrs-test.reserve"):
    sku: str
    qty: int


class Reserved(Event, type="cqrs-test.reserved", topic="cqrs-test.reserved"):
    sku: str
    left: int


class Release(Command, type="cqrs-test.release", topic="cqrs-test.release"):
    sku: str


def stock_commands(bus: EventBus | None = None) -> tuple[CommandBus, dict[str, asyncio.Event]]:
    commands: CommandBus = CommandBus(bus)
    released: dict[str, asyncio.Event] = {"plum": asyncio.Event()}
    stock = {"apple": 3}

    @commands.handler(Reserve)
    async def reserve(command: Reserve) -> Reserved:
        if stock.get(command.sku, 0) < command.qty:
            raise ValueError(f"only {stock.get(command.sku, 0)} {command.sku} left")
        stock[command.sku] -= command.qty
        return Reserved(sku=command.sku, left=stock[command.sku])

    @commands.handler(Release)
    async def release(command: Release) -> None:
        released.setdefault(command.sku, asyncio.Event()).set()

    return commands, released


async def test_dispatch_returns_the_result_or_raises_the_error() -> None:
    commands, _ = stock_commands()
    assert await commands.dispatch(Reserve(sku="apple", qty=2)) == Reserved(sku="apple", left=1)
    with pytest.raises(ValueError, match="only 1 apple left"):
        await commands.dispatch(Reserve(sku="apple", qty=2))


async def test_exactly_one_handler_per_command_type() -> None:
    commands, _ = stock_commands()
    with pytest.raises(DuplicateHandlerError, match="already has a handler"):

        @commands.handler(Reserve)
        async def again(command: Reserve) -> None: ...

    with pytest.raises(NoHandlerError, match="no handler for command"):
        await CommandBus().dispatch(Reserve(sku="x", qty=1))
    with pytest.raises(ConfigurationError, match="takes a Command class"):
        commands.handler(Reserved)  # type: ignore[type-var]


async def test_the_same_handlers_serve_remote_send_and_request() -> None:
    bus = EventBus("memory://", source=f"stock-{uuid.uuid4().hex[:6]}")
    commands, released = stock_commands(bus)
    commands.serve()
    async with bus:
        assert await commands.request(Reserve(sku="apple", qty=1), timeout=5) == Reserved(
            sku="apple", left=2
        )
        with pytest.raises(RequestFailedError) as failed:
            await commands.request(Reserve(sku="apple", qty=9), timeout=5)
        assert (failed.value.error_type, failed.value.error_message) == (
            "ValueError",
            "only 2 apple left",
        )
        assert await commands.request(Release(sku="pear"), timeout=5) is None
        await commands.send(Release(sku="plum"))
        await asyncio.wait_for(released["plum"].wait(), 5)


async def test_request_needs_a_started_bus_and_a_command() -> None:
    bus = EventBus("memory://")
    with pytest.raises(ConfigurationError, match="before start"):
        await bus.request(Release(sku="x"))
    async with bus:
        with pytest.raises(ConfigurationError, match="takes a Command"):
            await bus.request(Reserved(sku="x", left=0))  # type: ignore[arg-type]


class _Watch(logging.Handler):
    def __init__(self, text: str, seen: asyncio.Event) -> None:
        super().__init__(logging.WARNING)
        self.text, self.seen = text, seen

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


async def test_late_reply_is_logged_and_stop_fails_waiting_requests() -> None:
    """A reply after the timeout is dropped with a warning; stopping the bus fails a
    request still waiting (RequestError) instead of leaving it hanging."""
    gate, received, late = asyncio.Event(), asyncio.Event(), asyncio.Event()
    server = EventBus("memory://", source="server")

    @server.subscribe(Release)
    async def slow(command: Release) -> str:
        if command.sku == "never":
            received.set()
        await gate.wait()
        return command.sku

    client = EventBus("memory://", source="client")
    async with server, client:
        with pytest.raises(TimeoutError):
            await client.request(Release(sku="late"), timeout=0.2)
        watch = _Watch("late reply", late)
        logging.getLogger("eventbus.requests").addHandler(watch)
        try:
            gate.set()
            await asyncio.wait_for(late.wait(), 5)
        finally:
            logging.getLogger("eventbus.requests").removeHandler(watch)
        gate.clear()
        waiting = asyncio.create_task(client.request(Release(sku="never"), timeout=30))
        await asyncio.wait_for(received.wait(), 5)  # the request is out, waiting
        await client.stop()
        with pytest.raises(RequestError, match="bus stopped"):
            await waiting
        gate.set()


class Flaky(Command, type="cqrs-test.flaky", topic="cqrs-test.flaky"):
    n: int


async def test_a_retried_failure_sends_no_reply_the_final_outcome_does() -> None:
    """A failure that will be retried (here by broker redelivery) sends nothing: the
    requester gets the reply of the attempt that succeeded, not the first error."""
    from eventbus import Context, RetryPolicy

    bus = EventBus(
        "memory://",
        source=f"flaky-{uuid.uuid4().hex[:6]}",
        retry=RetryPolicy(
            max_attempts=3, in_process_attempts=1, initial_delay=0.01, max_delay=0.05, jitter=0.0
        ),
    )

    @bus.subscribe(Flaky)
    async def flaky(command: Flaky, ctx: Context) -> int:
        if ctx.attempt == 1:
            raise ConnectionError("first attempt fails")
        return command.n * 10

    async with bus:
        assert await bus.request(Flaky(n=4), timeout=5) == 40


async def test_a_duplicate_request_skipped_by_idempotency_sends_no_second_reply() -> None:
    from collections.abc import Sequence

    from eventbus import Envelope, MemoryIdempotencyStore
    from eventbus.context import Context
    from eventbus.middleware.base import Next, PublishNext

    requests_sent: list[Envelope] = []
    replies: list[Envelope] = []
    seen = asyncio.Event()
    runs: list[str] = []

    async def keep_requests(
        topic: str, envelopes: Sequence[Envelope], call_next: PublishNext
    ) -> None:
        requests_sent.extend(envelopes)
        await call_next(topic, envelopes)

    async def keep_replies(
        topic: str, envelopes: Sequence[Envelope], call_next: PublishNext
    ) -> None:
        replies.extend(envelopes)
        await call_next(topic, envelopes)

    async def count_deliveries(ctx: Context, call_next: Next) -> None:
        await call_next(ctx)
        runs.append(ctx.envelope.id)
        if len(runs) == 2:
            seen.set()

    server = EventBus(
        "memory://",
        source="idem-server",
        publish_middleware=[keep_replies],
        middleware=[count_deliveries],
        idempotency=MemoryIdempotencyStore(),
    )

    @server.subscribe(Flaky)
    async def once(command: Flaky) -> int:
        return command.n

    client = EventBus("memory://", source="idem-client", publish_middleware=[keep_requests])
    async with server, client:
        assert await client.request(Flaky(n=3), timeout=5) == 3
        await client.publish_envelopes(Flaky.default_topic(), requests_sent)  # redelivered
        await asyncio.wait_for(seen.wait(), 5)
    assert runs == [requests_sent[0].id] * 2
    assert len(replies) == 1, f"one reply per request, got {len(replies)}"


async def test_a_dead_letter_of_a_request_is_not_answered_again() -> None:
    """The DLQ keeps the request's replyto; its handlers must not reply to it (the
    requester already got the error reply)."""
    from collections.abc import Sequence

    from eventbus import Envelope, RetryPolicy
    from eventbus.deadletters import dlq_topic
    from eventbus.middleware.base import PublishNext

    replies: list[Envelope] = []
    letters: asyncio.Queue[Envelope] = asyncio.Queue()

    async def keep_replies(
        topic: str, envelopes: Sequence[Envelope], call_next: PublishNext
    ) -> None:
        replies.extend(envelopes)
        await call_next(topic, envelopes)

    topic = Flaky.default_topic()
    server = EventBus("memory://", source="dlq-server", retry=RetryPolicy(give_up_on=(KeyError,)))

    @server.subscribe(Flaky, group="dlq-test")
    async def fail(command: Flaky) -> int:
        raise KeyError(command.n)

    listener = EventBus("memory://", source="dlq-listener", publish_middleware=[keep_replies])

    @listener.subscribe(dlq_topic(topic, "dlq-test"), group="dlq-reader")
    async def read(envelope: Envelope) -> str:
        await letters.put(envelope)
        return "read"

    client = EventBus("memory://", source="dlq-client")
    async with server, listener, client:
        with pytest.raises(RequestFailedError, match="KeyError"):
            await client.request(Flaky(n=1), timeout=5)
        letter = await asyncio.wait_for(letters.get(), 5)
        await listener.stop()  # lets the handler's chain finish
    assert "replyto" in letter.extensions
    assert replies == [], "the dead letter's handler replied to the requester"
