"""Publish what the store recorded to the bus: a relay that follows ``read_all``.

Why a follower and not "append, then publish": a process that dies between the
commit and the publish would lose the event for every subscriber. The relay
instead reads the store from a checkpoint kept in the same database, publishes,
and only then advances the checkpoint. A crash between publish and checkpoint
publishes those events again on restart (at-least-once, same event ids), so
subscribers deduplicate by event id with the bus's idempotency middleware.
Because ``read_all`` is gap-safe, the checkpoint never passes an event that
commits late.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from eventbus.backoff import Backoff
from eventbus.bus import EventBus
from eventbus.errors import ConfigurationError
from eventbus.events import Registry, registry
from eventbus.patterns.eventsourcing.store import EventStore, StoredEvent

log = logging.getLogger("eventbus.patterns.eventsourcing")


@dataclass(frozen=True, slots=True)
class RelayHealth:
    """What :meth:`EventRelay.health` reports: ``ok`` unless the last attempt failed
    or the relay task ended."""

    ok: bool
    running: bool
    checkpoint: int
    published: int
    last_error: str = ""


class EventRelay:
    """Publishes every stored event to the bus, in position order, at least once.

    ``name`` keys its checkpoint (run one relay per name at a time). Each event
    goes to ``topic_for(stored)``: by default its registered class's topic, or its
    type name when no class is registered. ``run_once()`` publishes one batch;
    ``start()``/``stop()`` (or ``async with relay``) run it in the background,
    polling every ``poll_interval`` seconds and at once after :meth:`notify`.
    A failed publish is logged, retried with backoff from the checkpoint, and
    shown by :meth:`health`; it never ends the relay.
    """

    def __init__(
        self,
        store: EventStore,
        bus: EventBus,
        *,
        name: str = "relay",
        batch: int = 100,
        poll_interval: float = 0.2,
        topic_for: Callable[[StoredEvent], str] | None = None,
        registry: Registry = registry,
        backoff: Backoff | None = None,
    ) -> None:
        if batch < 1 or poll_interval <= 0:
            raise ConfigurationError("EventRelay needs batch >= 1 and poll_interval > 0")
        self.store = store
        self.bus = bus
        self.name = name
        self.batch = batch
        self.poll_interval = poll_interval
        self.registry = registry
        self._topic_for = topic_for or self._default_topic
        self._backoff = backoff or Backoff(initial=0.1, max_delay=5.0)
        self._wake = asyncio.Event()
        self._moved = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._checkpoint = 0
        self._published = 0
        self._error = ""

    def _default_topic(self, stored: StoredEvent) -> str:
        cls = self.registry.get(stored.envelope.type)
        return cls.default_topic() if cls is not None else stored.envelope.type

    async def run_once(self) -> int:
        """Publish the next batch after the checkpoint, then advance it; returns how
        many events were published (0: caught up)."""
        after = await self.store.get_checkpoint(self.name)
        page = await self.store.read_all(after, self.batch)
        start = 0
        # Consecutive events for one topic go out in one publish call, in order.
        for end in range(1, len(page) + 1):
            if end == len(page) or self._topic_for(page[end]) != self._topic_for(page[start]):
                run = page[start:end]
                await self.bus.publish_envelopes(self._topic_for(run[0]),
                                                 [s.envelope for s in run])
                self._published += len(run)
                start = end
        if page:
            # Only now: a crash before this line republishes the page on restart.
            await self.store.set_checkpoint(self.name, page[-1].position)
            self._checkpoint = page[-1].position
        else:
            self._checkpoint = after
        async with self._moved:
            self._moved.notify_all()
        return len(page)

    async def run(self) -> None:
        """Publish forever (until cancelled)."""
        failures = 0
        while True:
            try:
                count = await self.run_once()
                failures, self._error = 0, ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                self._error = f"{type(exc).__name__}: {exc}"
                delay = self._backoff.delay(failures)
                log.warning("event relay %r failed (attempt %d, retrying in %.2fs): %s",
                            self.name, failures, delay, self._error)
                await asyncio.sleep(delay)
                continue
            if count < self.batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)

    def notify(self) -> None:
        """Look for new events now instead of at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        """Run in a background task."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"event-relay-{self.name}")

    async def stop(self) -> None:
        """Cancel the background task and wait for it."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_until(self, position: int, timeout: float = 10.0) -> None:
        """Wait until the relay's checkpoint reaches ``position`` (TimeoutError after
        ``timeout`` seconds)."""
        self.notify()
        async with asyncio.timeout(timeout), self._moved:
            await self._moved.wait_for(lambda: self._checkpoint >= position)

    def health(self) -> RelayHealth:
        """Whether it runs, where its checkpoint is and its last error."""
        running = self._task is not None and not self._task.done()
        return RelayHealth(running and not self._error, running, self._checkpoint,
                           self._published, self._error)

    async def __aenter__(self) -> EventRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
