"""Publish what the store recorded to the bus: a relay that follows ``read_all``.

Why a follower and not "append, then publish": a process that dies between the
commit and the publish would lose the event for every subscriber. The relay
instead reads the store from a checkpoint kept in the same database, publishes,
and only then advances the checkpoint. A crash between publish and checkpoint
publishes those events again on restart (at-least-once, same event ids), so
subscribers deduplicate by event id with the bus's idempotency middleware.
Because ``read_all`` is gap-safe, the checkpoint never passes an event that
commits late.

An event the broker refuses for good (too large, undecodable) is **parked**
(see :mod:`~eventbus.patterns.eventsourcing.parking`): recorded in the store,
passed by the checkpoint, its stream held behind it, so the other streams go
on; :meth:`EventRelay.retry_parked` and :meth:`EventRelay.skip_parked` release it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from eventbus.backoff import Backoff
from eventbus.bus import EventBus
from eventbus.errors import BatchPublishError, ConfigurationError, DecodeError, MessageTooLargeError
from eventbus.events import Registry, registry
from eventbus.patterns.eventsourcing.parking import (
    ParkedStoredEvent,
    ParkingStore,
    heads,
    held_message,
    regroup,
)
from eventbus.patterns.eventsourcing.store import EventStore, StoredEvent
from eventbus.patterns.health import RelayHealth, RelayState
from eventbus.tasks import stop_task

# What a broker refuses for good: publishing the same event again cannot succeed.
_REFUSED = (MessageTooLargeError, DecodeError)

log = logging.getLogger("eventbus.patterns.eventsourcing")


class EventRelay:
    """Publishes every stored event to the bus, in position order, at least once.

    ``name`` keys its checkpoint (run one relay per name at a time). Each event
    goes to ``topic_for(stored)``: by default its registered class's topic, or its
    type name when no class is registered. ``run_once()`` publishes one batch;
    ``start()``/``stop()`` (or ``async with relay``) run it in the background,
    polling every ``poll_interval`` seconds and at once after :meth:`notify`.
    A failed publish is logged, retried with backoff from the checkpoint, and
    shown by :meth:`health`; it never ends the relay. An event the broker refuses
    for good is parked instead (module docs), when the store keeps parked events
    (every store here does).
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
        self._error: str | None = None
        self._failures = 0
        self._last_success: float | None = None
        self._stopped = False
        self._parked = 0
        self._parking = store if isinstance(store, ParkingStore) else None
        self._turn = asyncio.Lock()  # a batch and an operator's release take turns

    def _default_topic(self, stored: StoredEvent) -> str:
        cls = self.registry.get(stored.envelope.type)
        return cls.default_topic() if cls is not None else stored.envelope.type

    async def run_once(self) -> int:
        """Publish the next batch after the checkpoint, then advance it; returns how
        many events were published or parked (0: caught up)."""
        async with self._turn:
            after = await self.store.get_checkpoint(self.name)
            page = await self.store.read_all(after, self.batch)
            if not page:
                self._checkpoint = after
                async with self._moved:
                    self._moved.notify_all()
                return 0
            held: dict[str, int] = {}
            parked: list[ParkedStoredEvent] = []
            todo = page
            if self._parking is not None:
                current = await self._parking.parked(self.name)
                self._parked = len(current)
                held = heads(current)
                done = {p.position for p in current}
                todo = [s for s in page if s.position not in done]
            try:
                await self._publish_page(todo, held, parked)
            finally:
                if parked and self._parking is not None:
                    # Even when a later publish failed: the retry must not probe these again.
                    await self._parking.park(self.name, parked)
                    self._parked += len(parked)
            # Only now: a crash before this line republishes the page on restart.
            await self.store.set_checkpoint(self.name, page[-1].position)
            self._checkpoint = page[-1].position
        async with self._moved:
            self._moved.notify_all()
        return len(page)

    async def _publish_page(
        self, page: list[StoredEvent], held: dict[str, int], parked: list[ParkedStoredEvent]
    ) -> None:
        """Publish ``page`` in order, consecutive events for one topic in one call;
        events of held streams, and events refused for good, go to ``parked``."""
        run: list[StoredEvent] = []
        topic = ""
        for stored in page:
            if self._park_if_held(stored, held, parked):
                continue
            try:
                target = self._topic_for(stored)
            except Exception as exc:
                if self._parking is None:
                    raise
                self._refuse(stored, exc, held, parked)  # no topic: it can never go out
                continue
            if run and target != topic:
                await self._publish_run(topic, run, held, parked)
                run = []
            topic = target
            run.append(stored)
        if run:
            await self._publish_run(topic, run, held, parked)

    async def _publish_run(
        self,
        topic: str,
        run: list[StoredEvent],
        held: dict[str, int],
        parked: list[ParkedStoredEvent],
    ) -> None:
        try:
            await self.bus.publish_envelopes(topic, [s.envelope for s in run])
            self._published += len(run)
            return
        except (*_REFUSED, BatchPublishError) as exc:
            if self._parking is None or not _refused_for_good(exc):
                raise
        # One of them can never go out: find it, one event at a time.
        for stored in run:
            if self._park_if_held(stored, held, parked):
                continue
            try:
                await self.bus.publish_envelopes(topic, [stored.envelope])
                self._published += 1
            except _REFUSED as exc:
                self._refuse(stored, exc, held, parked)

    def _park_if_held(
        self, stored: StoredEvent, held: dict[str, int], parked: list[ParkedStoredEvent]
    ) -> bool:
        """Whether ``stored``'s stream is held; if so it joins ``parked``, behind the
        stream's earliest parked event, and is not published."""
        if stored.stream_id not in held:
            return False
        head = held[stored.stream_id]
        parked.append(ParkedStoredEvent.of(self.name, stored, held_message(head), head))
        return True

    def _refuse(
        self,
        stored: StoredEvent,
        exc: Exception,
        held: dict[str, int],
        parked: list[ParkedStoredEvent],
    ) -> None:
        error = f"{type(exc).__name__}: {exc}"
        parked.append(ParkedStoredEvent.of(self.name, stored, error))
        held[stored.stream_id] = stored.position
        log.error(
            "event relay %r: event %s (position %d, stream %r) cannot be published "
            "(%s); it is parked and its stream waits behind it: fix the cause and call "
            "retry_parked(%d), or skip_parked(%d)",
            self.name,
            stored.id,
            stored.position,
            stored.stream_id,
            error,
            stored.position,
            stored.position,
        )

    # -- parked events -----------------------------------------------------------------

    async def parked(self) -> list[ParkedStoredEvent]:
        """The events this relay parked, in position order (empty when the store
        keeps none)."""
        if self._parking is None:
            return []
        found = await self._parking.parked(self.name)
        self._parked = len(found)
        return found

    async def retry_parked(self, position: int) -> int:
        """Publish the parked event at ``position`` (the earliest parked event of its
        stream) and then the events held behind it, in order; returns how many were
        published. Raises what the broker says when the event is refused again (it
        stays parked, with that error); a later event refused again becomes its
        stream's head (see :meth:`parked`)."""
        return await self._release(position, publish_head=True)

    async def skip_parked(self, position: int) -> int:
        """Give up on the parked event at ``position`` (it is never published) and
        publish the events held behind it, in order; returns how many were published."""
        return await self._release(position, publish_head=False)

    async def _release(self, position: int, *, publish_head: bool) -> int:
        if self._parking is None:
            raise ConfigurationError(f"{type(self.store).__name__} keeps no parked events")
        published = 0
        async with self._turn:
            queue = await self._stream_queue(position)
            stream = queue[0].stream_id
            if not publish_head:
                await self._parking.unpark(self.name, [position])
                log.warning(
                    "event relay %r: parked event %s (position %d, stream %r) skipped for good",
                    self.name,
                    queue[0].event_id,
                    position,
                    stream,
                )
                queue = queue[1:]
            while queue:
                for row in queue:
                    stored = row.stored()
                    try:
                        await self.bus.publish_envelopes(self._topic_for(stored), [stored.envelope])
                    except _REFUSED as exc:
                        error = f"{type(exc).__name__}: {exc}"
                        await self._parking.park(self.name, regroup(queue, row, error))
                        if row.position == position:
                            raise
                        log.error(
                            "event relay %r: held event at position %d was refused "
                            "(%s); it now heads stream %r",
                            self.name,
                            row.position,
                            error,
                            stream,
                        )
                        return published
                    await self._parking.unpark(self.name, [row.position])
                    published += 1
                    self._published += 1
                # Events the relay parked behind this stream meanwhile (another process).
                queue = [p for p in await self._parking.parked(self.name) if p.stream_id == stream]
            self._parked = len(await self._parking.parked(self.name))
        return published

    async def _stream_queue(self, position: int) -> list[ParkedStoredEvent]:
        """The parked events of the stream whose head is at ``position``, in order."""
        assert self._parking is not None
        rows = await self._parking.parked(self.name)
        target = next((p for p in rows if p.position == position), None)
        if target is None:
            raise LookupError(
                f"event relay {self.name!r} has no parked event at position "
                f"{position}; see parked()"
            )
        queue = [p for p in rows if p.stream_id == target.stream_id]
        if queue[0].position != position:
            raise ConfigurationError(
                f"event relay {self.name!r}: the event at position {position} waits behind "
                f"position {queue[0].position} of stream {target.stream_id!r}; retry or skip "
                "that one first"
            )
        return queue

    async def run(self) -> None:
        """Publish forever (until cancelled)."""
        self._failures = 0
        while True:
            try:
                count = await self.run_once()
                self._failures, self._error = 0, None
                self._last_success = time.time()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failures += 1
                self._error = f"{type(exc).__name__}: {exc}"
                delay = self._backoff.delay(self._failures)
                log.warning(
                    "event relay %r failed (attempt %d, retrying in %.2fs): %s",
                    self.name,
                    self._failures,
                    delay,
                    self._error,
                )
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
            self._stopped = False
            self._task = asyncio.create_task(self.run(), name=f"event-relay-{self.name}")

    async def stop(self, timeout: float = 10.0) -> None:
        """Cancel the background task and wait for it, at most ``timeout`` seconds (a
        batch cut short is published again from the checkpoint later)."""
        task, self._task = self._task, None
        if task is not None:
            self._stopped = True
        await stop_task(task, timeout=timeout, what=f"event relay {self.name!r}", log=log)

    async def wait_until(self, position: int, timeout: float = 10.0) -> None:
        """Wait until the relay's checkpoint reaches ``position`` (TimeoutError after
        ``timeout`` seconds)."""
        self.notify()
        async with asyncio.timeout(timeout), self._moved:
            await self._moved.wait_for(lambda: self._checkpoint >= position)

    def health(self) -> RelayHealth:
        """Whether it runs, where its checkpoint is and its last error."""
        state: RelayState
        if self._task is None:
            state = "stopped" if self._stopped else "idle"
        elif self._task.done():
            state = "dead"  # run() only ends by cancellation, which stop() does
        else:
            state = "backing_off" if self._failures else "running"
        return RelayHealth(
            ok=state == "running",
            state=state,
            published=self._published,
            consecutive_failures=self._failures,
            last_error=self._error,
            last_success=self._last_success,
            checkpoint=self._checkpoint,
            parked=self._parked,
        )

    async def __aenter__(self) -> EventRelay:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _refused_for_good(exc: Exception) -> bool:
    """Whether publishing ``exc``'s events one at a time could tell the refused one."""
    if isinstance(exc, BatchPublishError):
        return bool(exc.failures) and all(isinstance(e, _REFUSED) for e in exc.failures.values())
    return isinstance(exc, _REFUSED)
