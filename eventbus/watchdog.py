"""A hung handler made visible: a warning naming the event while it is still running.

A handler with no timeout that never returns holds its message, its key's lane
and a prefetch slot for ever, and nothing else says so. :class:`SlowHandlerWatch`
remembers when each handler run began (a dict entry per run, nothing per event
beyond that) and one background task per subscription looks at them now and
then: a run older than ``warn_after`` seconds gets a WARNING with the event id,
type, topic, group and attempt, repeated every ``warn_after`` seconds while it
goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from eventbus.adapter import Delivery

log = logging.getLogger("eventbus.runner")


class SlowHandlerWatch:
    """Tracks running handlers of one subscription and warns about slow ones."""

    def __init__(self, warn_after: float) -> None:
        if not warn_after > 0:
            raise ValueError(
                f"warn_after must be a positive number of seconds, not {warn_after!r}"
            )
        self.warn_after = warn_after
        # Delivery -> (when it began, when it is next reported).
        self._running: dict[Delivery, list[float]] = {}
        self._task: asyncio.Task[None] | None = None

    def begin(self, delivery: Delivery) -> None:
        now = time.monotonic()
        self._running[delivery] = [now, now + self.warn_after]

    def end(self, delivery: Delivery) -> None:
        self._running.pop(delivery, None)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def check(self, now: float | None = None) -> int:
        """Warn about every run past its next report time; returns how many."""
        now = time.monotonic() if now is None else now
        warned = 0
        for delivery, times in list(self._running.items()):
            began, due = times
            if now < due:
                continue
            times[1] = now + self.warn_after
            warned += 1
            envelope = delivery.envelope
            log.warning(
                "handler for event %s (%s) on %s/%s, attempt %d, still running after "
                "%.0fs; set a timeout on the subscription if it may hang",
                envelope.id if envelope else delivery.message_id,
                envelope.type if envelope else "undecodable",
                delivery.topic, delivery.group, delivery.attempt, now - began,
                extra={
                    "event_id": envelope.id if envelope else delivery.message_id,
                    "event_type": envelope.type if envelope else "",
                    "correlation_id": envelope.correlationid if envelope else "",
                    "topic": delivery.topic, "group": delivery.group,
                    "attempt": delivery.attempt,
                },
            )
        return warned

    async def _watch(self) -> None:
        interval = min(max(self.warn_after / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            if self._running:
                self.check()
