"""Request/reply (``bus.request``): typed replies, errors, timeouts, one reply topic."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from eventbus.adapter import SubscribeOptions, Subscription
from eventbus.bus import EventBus
from eventbus.envelope import Envelope
from eventbus.events import Command, Event
from eventbus.requests import REPLY_TO, RequestFailedError, RequestTimeoutError
from eventbus.testing.conformance._events import on_topic
from eventbus.testing.conformance._support import WAIT, Case, case


class Ask(Command, type="eventbus.conformance.ask", topic="eventbus.conformance.ask"):
    """A request; ``mode`` says how the handler answers."""

    n: int = 0
    mode: str = "typed"  # typed | plain | fail | slow


class Answer(Event, type="eventbus.conformance.answer", topic="eventbus.conformance.answer"):
    """The typed reply to :class:`Ask`."""

    n: int


class _Spy:
    """Counts what a bus asks of its adapter: subscriptions opened, topics published to."""

    def __init__(self, bus: EventBus) -> None:
        self.subscribed: list[str] = []
        self.published: list[str] = []
        adapter = bus.adapter
        subscribe, publish = adapter.subscribe, adapter.publish

        async def counting_subscribe(topic: str, options: SubscribeOptions) -> Subscription:
            self.subscribed.append(topic)
            return await subscribe(topic, options)

        async def counting_publish(topic: str, envelopes: Sequence[Envelope]) -> None:
            self.published.append(topic)
            await publish(topic, envelopes)

        # Instance attributes shadow the methods: the bus calls through these.
        setattr(adapter, "subscribe", counting_subscribe)  # noqa: B010
        setattr(adapter, "publish", counting_publish)  # noqa: B010


async def _serve(run: Case) -> tuple[type[Ask], EventBus, asyncio.Event]:
    """A started bus handling a private ``Ask`` topic; ``slow`` requests wait on the
    returned event."""
    ask = on_topic(Ask, run.topic())
    release = asyncio.Event()
    server = run.bus()

    @server.subscribe(ask)
    async def answer(command: Ask) -> Any:
        if command.mode == "fail":
            raise ValueError(f"cannot answer {command.n}")
        if command.mode == "slow":
            await release.wait()
        if command.mode == "plain":
            return {"n": command.n, "doubled": command.n * 2}
        return Answer(n=command.n * 2)

    await server.start()
    return ask, server, release


class RequestCases:
    """``bus.request`` works on every broker, with one reply topic per requesting bus."""

    @case()
    async def test_request_reply_typed_without_topic_growth(self, run: Case) -> None:
        """A request returns the handler's reply as its class (a registered Event) or
        as JSON data for a plain value; concurrent requests each get their own reply
        (correlated by id), and twenty requests open one reply subscription and
        publish to one reply topic: nothing grows per request."""
        ask, server, _ = await _serve(run)
        server_spy = _Spy(server)
        client = run.bus()
        client_spy = _Spy(client)
        await client.start()
        typed = await client.request(ask(n=3), timeout=WAIT)
        assert isinstance(typed, Answer) and typed.n == 6, f"typed reply: {typed!r}"
        plain = await client.request(ask(n=4, mode="plain"), timeout=WAIT, reply_type=dict)
        assert plain == {"n": 4, "doubled": 8}, f"plain reply: {plain!r}"
        replies = await asyncio.gather(
            *(client.request(ask(n=n), timeout=WAIT, reply_type=Answer) for n in range(20))
        )
        assert [r.n for r in replies] == [2 * n for n in range(20)], (
            f"replies went to the wrong requests: {[r.n for r in replies]}"
        )
        assert len(client_spy.subscribed) == 1, (
            f"one reply subscription per bus, got {client_spy.subscribed}"
        )
        assert set(client_spy.published) == {ask.default_topic()}, (
            f"requests went only to the command topic, got {set(client_spy.published)}"
        )
        assert set(server_spy.published) == set(client_spy.subscribed), (
            f"every reply went to the one reply topic {client_spy.subscribed}, "
            f"got {set(server_spy.published)}"
        )

    @case()
    async def test_request_error_reply_and_dead_letter(self, run: Case) -> None:
        """A handler failing for good sends an error reply (the requester raises
        RequestFailedError with the error's type and message) and the command is
        dead-lettered as usual; the bus then answers the next request."""
        ask, _, _ = await _serve(run)
        dead = await run.dead_letters(ask.default_topic(), ask.default_topic())
        client = await run.publisher()
        with pytest.raises(RequestFailedError) as failed:
            await client.request(ask(n=7, mode="fail"), timeout=WAIT)
        assert failed.value.error_type == "ValueError"
        assert failed.value.error_message == "cannot answer 7"
        assert failed.value.command_type == Ask.event_type()
        letters = await dead.wait_count(1)
        assert letters[0].id == failed.value.request_id and REPLY_TO in letters[0].extensions
        assert (await client.request(ask(n=1), timeout=WAIT)) == Answer(n=2)

    @case()
    async def test_request_timeout_drops_late_reply(self, run: Case) -> None:
        """No reply within the timeout raises RequestTimeoutError; the reply that comes
        later is dropped, never handed to the next request, which gets its own."""
        ask, _, release = await _serve(run)
        client = await run.publisher()
        assert (await client.request(ask(n=1), timeout=WAIT)) == Answer(n=2)
        with pytest.raises(RequestTimeoutError):
            await client.request(ask(n=5, mode="slow"), timeout=0.5)
        release.set()  # the late reply (n=10) goes out now
        assert (await client.request(ask(n=6), timeout=WAIT)) == Answer(n=12)
        assert (await client.request(ask(n=8), timeout=WAIT)) == Answer(n=16)
