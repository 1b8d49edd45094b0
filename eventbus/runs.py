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

# An entry is one int: handler runs in the high bits, deliveries seen in the low
# ones. Ints are not tracked by the garbage collector, where a tuple per change
# (three per delivery) fed every young-generation collection.
_RUN = 1 << 32
_SEEN = _RUN - 1


class RunCounter:
    """Runs and deliveries seen per event id of one (topic, group).

    It remembers at least the ``limit`` most recently touched ids and at most
    twice that: two plain dicts, the young one taking every change and, once it
    holds ``limit`` ids, becoming the old one (the previous old one, with what no
    one touched since, is forgotten); an id found only in the old dict moves to
    the young one. Per delivery that is a few plain dict operations on ints, where
    an ordered map with exact eviction and tuple entries cost ~1 us in place
    (a linked node per id moved on every access, cache misses, collector work).
    """

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._young: dict[str, int] = {}
        self._old: dict[str, int] = {}

    def _get(self, event_id: str) -> int | None:
        entry = self._young.get(event_id)
        if entry is None and self._old:
            entry = self._old.pop(event_id, None)
        return entry

    def _put(self, event_id: str, entry: int) -> None:
        young = self._young
        young[event_id] = entry
        if len(young) >= self.limit:
            self._old, self._young = young, {}

    def seen(self, delivery: Delivery) -> int:
        """Record ``delivery``; return the runs its message already had before it."""
        envelope = delivery.envelope
        attempt = delivery.attempt
        if envelope is None:
            return attempt - 1 if attempt > 1 else 0
        event_id = envelope.id
        entry = self._get(event_id)
        if entry is None:
            self._put(event_id, 1)
            return attempt - 1 if attempt > 1 else 0
        self._put(event_id, entry + 1)
        runs, seen = entry >> 32, entry & _SEEN
        # Earlier deliveries this process never saw: assume each ran once.
        return runs + max(0, attempt - 1 - seen)

    def ran(self, event_id: str) -> None:
        """The handler is about to run for ``event_id``."""
        young = self._young
        entry = young.get(event_id)
        if entry is not None:  # the common case: seen() just put it there
            young[event_id] = entry + _RUN
            return
        entry = self._get(event_id)
        self._put(event_id, _RUN if entry is None else entry + _RUN)

    def not_ran(self, event_id: str) -> None:
        """Take back a run that shutdown cut short: it says nothing about the handler."""
        entry = self._get(event_id)
        if entry is not None:
            self._put(event_id, entry - _RUN if entry >= _RUN else entry)

    def finished(self, event_id: str) -> None:
        """The message was handled or dead-lettered: a later copy starts a fresh budget.

        The deliveries seen are kept, so the bounces of a duplicate that waited for
        this one are not mistaken for unseen runs.
        """
        young = self._young
        entry = young.get(event_id)
        if entry is not None:  # the common case
            if entry >= _RUN:
                young[event_id] = entry & _SEEN
            return
        entry = self._get(event_id)
        if entry is not None:
            self._put(event_id, entry & _SEEN)


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
