"""The run counter's bound: recent ids are remembered, old ones forgotten."""

from __future__ import annotations

from eventbus import Envelope
from eventbus.adapter import Delivery
from eventbus.runs import RunCounter


class _Delivery(Delivery):
    async def _ack(self) -> None: ...

    async def _nack(self, delay: float) -> None: ...

    async def _reject(self) -> None: ...


def _delivery(event_id: str, attempt: int = 1) -> Delivery:
    envelope = Envelope.create(type="t", source="s", id=event_id)
    return _Delivery(topic="t", group="g", envelope=envelope, attempt=attempt)


def test_the_last_limit_ids_keep_their_runs_and_older_ones_are_forgotten() -> None:
    counter = RunCounter(limit=4)
    counter.seen(_delivery("kept"))
    counter.ran("kept")
    counter.ran("kept")
    for n in range(3):  # "kept" is among the last 4 ids touched
        counter.seen(_delivery(f"other{n}"))
    assert counter.seen(_delivery("kept", attempt=2)) == 2  # two runs (forgotten: 1)
    counter.seen(_delivery("old"))
    for _ in range(3):
        counter.ran("old")
    for n in range(8):  # two limits' worth of newer ids
        counter.seen(_delivery(f"newer{n}"))
    # Forgotten (else 3 + 1): each earlier delivery counts as one run.
    assert counter.seen(_delivery("old", attempt=3)) == 2


def test_finished_starts_a_fresh_budget_but_keeps_deliveries_seen() -> None:
    counter = RunCounter(limit=4)
    counter.seen(_delivery("e"))
    counter.ran("e")
    counter.finished("e")
    # Second delivery of the same message (attempt 2): no runs since finished, and
    # the first delivery was seen here, so none is assumed unseen.
    assert counter.seen(_delivery("e", attempt=2)) == 0
    counter.ran("e")
    counter.not_ran("e")
    assert counter.seen(_delivery("e", attempt=3)) == 0
