"""Store suites for the patterns: the cases an event store, or an outbox and inbox on
a database, must pass, shipped so a third-party backend proves itself the way an
adapter does with the :class:`~eventbus.testing.ConformanceSuite`.

Subclass a suite in a test module (as ``Test...``) and provide its target fixture;
each case runs on storage of its own, in ``asyncio.run`` (no async plugin needed)::

    import pytest
    from eventbus.testing.patterns import (
        EventStoreSuite, EventStoreTarget, OutboxSuite, OutboxTarget)

    @pytest.fixture
    def event_store_target(tmp_path) -> EventStoreTarget:
        return EventStoreTarget("mystore", lambda: MyStore.connect(f"{tmp_path}/events"))

    class TestMyEventStore(EventStoreSuite):
        pass

    @pytest.fixture
    def outbox_target(tmp_path) -> OutboxTarget:
        url = f"sqlite:///{tmp_path}/app.db"
        return OutboxTarget("mydb", lambda: MyDatabase.connect(url))

    class TestMyOutbox(OutboxSuite):
        pass

``EventStoreCases``, ``OutboxCases``, ``RelayFaultCases`` and ``InboxCases`` are
the parts, for a suite of your own choosing. ``EVENTBUS_CONFORMANCE_PATIENCE``
multiplies every wait, as it does the conformance suite's.
"""

from __future__ import annotations

from eventbus.testing.patterns.event_store import EventStoreCases, EventStoreSuite, EventStoreTarget
from eventbus.testing.patterns.inbox import InboxCases
from eventbus.testing.patterns.outbox import OutboxCases, OutboxTarget
from eventbus.testing.patterns.relay_faults import RelayFaultCases


class OutboxSuite(OutboxCases, RelayFaultCases, InboxCases):
    """Every outbox, relay and inbox case; subclass it (as ``Test...``) next to an
    ``outbox_target`` fixture."""


__all__ = [
    "EventStoreCases",
    "EventStoreSuite",
    "EventStoreTarget",
    "InboxCases",
    "OutboxCases",
    "OutboxSuite",
    "OutboxTarget",
    "RelayFaultCases",
]
