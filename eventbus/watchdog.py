"""A hung handler made visible: a warning naming the event while it is still running.

A handler with no timeout that never returns holds its message, its key's lane
and a prefetch slot for ever, and nothing else says so. :class:`SlowHandlerWatch`
remembers when each handler run began (a dict entry per run, nothing per event
beyond that) and one background task per subscription looks at them now and
then: a run older than ``warn_after`` seconds gets a WARNING with the event id,
type, topic, group and attempt, repeated every ``warn_after`` seconds while it
goes on.

The runner writes and removes the entries itself (``running[delivery] =
watch.stamp``, then ``running.pop(delivery)``): two dict operations per
delivery, no clock read. ``stamp`` is the time of the watch task's next look,
which it moves on each time it looks: no run starts later than its stamp, so a
run is only reported once it has really gone on for ``warn_after`` seconds (and
at most one look interval, a quarter of ``warn_after``, after that).
"""

from __future__ import annotations

import asyncio
import logging
import time

from eventbus.adapter import Delivery
from eventbus.tasks import stop_task

log = logging.getLogger("eventbus.runner")


class SlowHandlerWatch:
    """Tracks running handlers of one subscription and warns about slow ones."""

    def __init__(self, warn_after: float) -> None:
        if not warn_after > 0:
            raise ValueError(f"warn_after must be a positive number of seconds, not {warn_after!r}")
        self.warn_after = warn_after
        self.interval = min(max(warn_after / 4, 0.05), 5.0)
        # Delivery -> a monotonic time no earlier than when its handler began.
        self.running: dict[Delivery, float] = {}
        # Runs already reported -> when they are reported again.
        self._next_report: dict[Delivery, float] = {}
        self.stamp = time.monotonic() + self.interval
        self._task: asyncio.Task[None] | None = None

    def begin(self, delivery: Delivery) -> None:
        """A handler run for ``delivery`` starts (the runner inlines this)."""
        self.running[delivery] = self.stamp

    def end(self, delivery: Delivery) -> None:
        """The run for ``delivery`` is over (the runner inlines this)."""
        self.running.pop(delivery, None)

    def start(self) -> None:
        if self._task is None:
            self.stamp = time.monotonic() + self.interval
            self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    def check(self, now: float | None = None) -> int:
        """Warn about every run past its next report time; returns how many."""
        now = time.monotonic() if now is None else now
        warned = 0
        reports = self._next_report
        for delivery in [d for d in reports if d not in self.running]:
            del reports[delivery]  # finished since its last report
        for delivery, began in list(self.running.items()):
            if now < reports.get(delivery, began + self.warn_after):
                continue
            reports[delivery] = now + self.warn_after
            warned += 1
            envelope = delivery.envelope
            log.warning(
                "handler for event %s (%s) on %s/%s, attempt %d, still running after "
                "%.0fs; set a timeout on the subscription if it may hang",
                envelope.id if envelope else delivery.message_id,
                envelope.type if envelope else "undecodable",
                delivery.topic,
                delivery.group,
                delivery.attempt,
                now - began,
                extra={
                    "event_id": envelope.id if envelope else delivery.message_id,
                    "event_type": envelope.type if envelope else "",
                    "correlation_id": envelope.correlationid if envelope else "",
                    "topic": delivery.topic,
                    "group": delivery.group,
                    "attempt": delivery.attempt,
                },
            )
        return warned

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            # Runs beginning from now on start before the next look.
            stamp, self.stamp = self.stamp, now + self.interval
            running = self.running
            if running:
                if now > stamp:
                    # This look is late (something held the loop): a run stamped
                    # since the last look may have begun up to now.
                    for delivery, began in running.items():
                        if began == stamp:
                            running[delivery] = now
                self.check(now)
