"""The bus-fed side of :class:`~eventbus.patterns.cqrs.Projection`: events from a
subscription, applied once per event id (the ids are kept in ``eventbus_projection_seen``).

Why the id is recorded *before* ``apply()``, in the same transaction: a twin
delivery running concurrently waits on that row's unique key and then finds it
(``ON CONFLICT DO NOTHING`` inserts nothing), so "already applied" is told by
the insert, never guessed from an error. Any error ``apply()`` raises (a unique
constraint of the read model included) then fails the handler: the bus retries
it and dead-letters it, instead of the event being acknowledged unapplied.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, ClassVar

from eventbus.envelope import Envelope
from eventbus.errors import ConfigurationError
from eventbus.events import Message, Registry
from eventbus.patterns.sql import Database, Transaction

if TYPE_CHECKING:
    from eventbus.bus import EventBus

SEEN = "eventbus_projection_seen"


class BusFeed:
    """Projection's methods for the bus feed (see the module docs)."""

    handles: ClassVar[tuple[type[Message], ...]] = ()
    db: Database
    name: str
    registry: Registry
    _moved: asyncio.Event

    def wants(self, event_type: str) -> bool:  # pragma: no cover - Projection's
        raise NotImplementedError

    async def apply(self, event: Message, tx: Transaction) -> None:  # pragma: no cover
        raise NotImplementedError

    async def _wait_moved(self) -> None:  # pragma: no cover - Projection's
        raise NotImplementedError

    async def handle(self, envelope: Envelope) -> bool:
        """Apply one event received from the bus, once per event id (the id is
        recorded in the read model's transaction); returns ``False`` for a duplicate.
        What ``apply()`` raises propagates: the bus retries, then dead-letters."""
        if not self.wants(envelope.type):
            return False
        async with self.db.transaction() as tx:
            fresh = await tx.execute(
                f"INSERT INTO {SEEN} (name, event_id, seen_at) VALUES ($1, $2, $3) "
                "ON CONFLICT (name, event_id) DO NOTHING",
                self.name,
                envelope.id,
                time.time(),
            )
            if not fresh:
                return False
            await self.apply(self.registry.decode(envelope), tx)
        self._moved.set()
        return True

    async def cleanup(self, older_than: float) -> int:
        """Forget bus-fed event ids seen more than ``older_than`` seconds ago (keep
        it longer than the broker's redelivery horizon: a redelivery of a forgotten
        id is applied again); returns how many."""
        async with self.db.transaction() as tx:
            return int(
                await tx.execute(
                    f"DELETE FROM {SEEN} WHERE name = $1 AND seen_at < $2",
                    self.name,
                    time.time() - older_than,
                )
            )

    def subscribe(
        self, bus: EventBus, *classes: type[Message], group: str | None = None, **options: Any
    ) -> None:
        """Feed the projection from ``bus``: its handler for ``classes`` (default
        :attr:`handles`) in ``group`` (default ``projection-<name>``)."""
        targets = classes or self.handles
        if not targets:
            raise ConfigurationError(
                f"projection {self.name!r}: name the event classes to subscribe to "
                "(subscribe(bus, OrderPlaced, ...) or the class attribute handles)"
            )

        async def project(envelope: Envelope) -> None:
            await self.handle(envelope)

        project.__qualname__ = f"{type(self).__name__}.handle"
        bus.subscribe(*targets, group=group or f"projection-{self.name}", **options)(project)

    async def wait_for_event(self, event_id: str, timeout: float = 10.0) -> None:
        """Return once the bus-fed event ``event_id`` is in the read model."""
        async with asyncio.timeout(timeout):
            while True:
                async with self.db.transaction() as tx:
                    if await tx.fetchval(
                        f"SELECT 1 FROM {SEEN} WHERE name = $1 AND event_id = $2",
                        self.name,
                        event_id,
                    ):
                        return
                await self._wait_moved()
