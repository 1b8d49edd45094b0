"""The conformance suite's events, private variants of them on a case's own topic, and
handlers that record them in a :class:`~eventbus.testing.collector.Collector`."""

from __future__ import annotations

import types
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from eventbus.envelope import Envelope
from eventbus.events import Event, Message
from eventbus.testing.collector import Collector

M = TypeVar("M", bound=Message)


class Ping(Event, type="eventbus.conformance.ping", topic="eventbus.conformance"):
    """The workhorse event of the suite."""

    seq: int = 0
    key: str = ""
    note: str = ""


class Pong(Event, type="eventbus.conformance.pong", topic="eventbus.conformance"):
    """A second type, for dispatch-by-type cases."""

    seq: int = 0


class Reply(Event, type="eventbus.conformance.reply", topic="eventbus.conformance"):
    """Published from inside a handler, for correlation cases."""

    seq: int = 0


def on_topic(cls: type[M], topic: str) -> type[M]:
    """A subclass of ``cls`` (same type name and version) whose default topic is ``topic``.

    Subscribing by class uses the class's topic, so each case makes private
    variants to get unique topics; they are not registered, so the registry keeps
    the base classes.
    """
    keywords = {
        "topic": topic,
        "type": cls.event_type(),
        "version": cls.data_version(),
        "register": False,
    }
    return cast("type[M]", types.new_class(cls.__name__, (cls,), keywords))


def record_events(inbox: Collector[Ping]) -> Callable[[Ping], Awaitable[None]]:
    """A handler adding each event to ``inbox`` (one per loop iteration, no late binding)."""

    async def handle(event: Ping) -> None:
        inbox.add(event)

    return handle


def record_seqs(inbox: Collector[int]) -> Callable[[Ping], Awaitable[None]]:
    """A handler adding each event's ``seq`` to ``inbox``."""

    async def handle(event: Ping) -> None:
        inbox.add(event.seq)

    return handle


def record_batches(inbox: Collector[list[int]]) -> Callable[[list[Ping]], Awaitable[None]]:
    """A batch handler adding the ``seq`` of each batch's events to ``inbox``, a list a
    batch."""

    async def handle(events: list[Ping]) -> None:
        inbox.add([e.seq for e in events])

    return handle


def record_envelopes(inbox: Collector[Envelope]) -> Callable[[Envelope], Awaitable[None]]:
    """A handler of raw envelopes (a topic subscribed without an event class) adding each
    to ``inbox``."""

    async def keep(envelope: Envelope) -> None:
        inbox.add(envelope)

    return keep
