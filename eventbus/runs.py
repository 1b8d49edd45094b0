"""Counting real handler runs per message, for the retry budget.

The broker's delivery count says how often a message was handed out, not how
often its handler ran: an idempotency "in progress" bounce, work cancelled at
shutdown or dropped after a reconnect are deliveries without a run. The runner
counts runs itself, per event id, in a bounded map shared by every runner of
the same (broker URL, topic, group) in this process (so a bus restarted in the
same process keeps the count); for deliveries it never saw (made to another
process) it assumes one run each, so a message that crashes every process it
reaches still uses up its budget.
"""

from __future__ import annotations

from collections import OrderedDict

from eventbus.adapter import Delivery


class RunCounter:
    """Runs and deliveries seen per event id of one (topic, group), at most ``limit`` ids
    (the least recently seen are forgotten first)."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        # event id -> (handler runs, deliveries seen). Tuples of two ints, replaced on
        # each change: the collector stops tracking them, where ``limit`` long-lived
        # lists made every full collection walk them.
        self._entries: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def _add(self, event_id: str, entry: tuple[int, int]) -> None:
        entries = self._entries
        entries[event_id] = entry
        while len(entries) > self.limit:
            entries.popitem(last=False)

    def seen(self, delivery: Delivery) -> int:
        """Record ``delivery``; return the runs its message already had before it."""
        envelope = delivery.envelope
        if envelope is None:
            return max(0, delivery.attempt - 1)
        event_id = envelope.id
        entry = self._entries.get(event_id)
        if entry is None:
            self._add(event_id, (0, 1))
            return max(0, delivery.attempt - 1)
        self._entries.move_to_end(event_id)
        runs, seen = entry
        self._entries[event_id] = (runs, seen + 1)
        # Earlier deliveries this process never saw: assume each ran once.
        return runs + max(0, delivery.attempt - 1 - seen)

    def ran(self, event_id: str) -> None:
        """The handler is about to run for ``event_id``."""
        entry = self._entries.get(event_id)
        if entry is None:
            self._add(event_id, (1, 0))
        else:
            self._entries.move_to_end(event_id)
            self._entries[event_id] = (entry[0] + 1, entry[1])

    def not_ran(self, event_id: str) -> None:
        """Take back a run that shutdown cut short: it says nothing about the handler."""
        entry = self._entries.get(event_id)
        if entry is not None and entry[0] > 0:
            self._entries[event_id] = (entry[0] - 1, entry[1])

    def finished(self, event_id: str) -> None:
        """The message was handled or dead-lettered: a later copy starts a fresh budget.

        The deliveries seen are kept, so the bounces of a duplicate that waited for
        this one are not mistaken for unseen runs.
        """
        entry = self._entries.get(event_id)
        if entry is not None and entry[0]:
            self._entries[event_id] = (0, entry[1])


_counters: OrderedDict[tuple[str, str, str], RunCounter] = OrderedDict()
_MAX_COUNTERS = 1000


def counter_for(url: str, topic: str, group: str) -> RunCounter:
    """The process-wide run counter of (broker ``url``, ``topic``, ``group``)."""
    key = (url, topic, group)
    counter = _counters.get(key)
    if counter is None:
        counter = _counters[key] = RunCounter()
        while len(_counters) > _MAX_COUNTERS:
            _counters.popitem(last=False)
    else:
        _counters.move_to_end(key)
    return counter
