"""``RelayHealth``: what a relay (the outbox's, the event store's) reports about itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

RelayState = Literal["idle", "running", "backing_off", "stopped", "dead"]
"""``idle``: created, not started; ``running``: publishing or waiting for work;
``backing_off``: the last attempt failed, it tries again after a wait; ``stopped``:
``stop()`` ended it; ``dead``: its task ended by itself (a bug: see the log)."""


@dataclass(frozen=True, slots=True)
class RelayHealth:
    """What :meth:`OutboxRelay.health <eventbus.patterns.outbox.OutboxRelay.health>` and
    :meth:`EventRelay.health <eventbus.patterns.eventsourcing.EventRelay.health>` report.

    - ``ok``: running and its last attempt succeeded;
    - ``state``: see :data:`RelayState`;
    - ``published``: what it published since it was created;
    - ``consecutive_failures`` and ``last_error`` (``"Type: message"``, ``None`` once
      an attempt succeeds again);
    - ``last_success``: when an attempt last succeeded (``time.time()``), or ``None``;
    - ``checkpoint``: the event relay's store position published up to (``None`` for
      the outbox relay, which has no single position);
    - ``parked``: events set aside for an operator (the event relay goes on without
      them; ``ok`` stays true).
    """

    ok: bool
    state: RelayState
    published: int
    consecutive_failures: int = 0
    last_error: str | None = None
    last_success: float | None = None
    checkpoint: int | None = None
    parked: int = 0

    @property
    def running(self) -> bool:
        """Whether its task is alive (publishing, waiting, or backing off)."""
        return self.state in ("running", "backing_off")
