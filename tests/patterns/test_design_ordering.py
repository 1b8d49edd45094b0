"""The deprecated OrderingGuard's in-memory reassembly (outside a bus handler), fed
deliberately reordered and duplicated input; and ``classify``."""

from __future__ import annotations

import random

import pytest

from eventbus.errors import ConfigurationError
from eventbus.patterns.ordering import Verdict, classify
from eventbus.patterns.ordering.legacy import OrderingGuard  # no warning: tested on purpose


def shuffled_with_duplicates(entities: int, per_entity: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    events = [(f"e{e}", n) for e in range(entities) for n in range(1, per_entity + 1)]
    events += rng.sample(events, len(events) // 4)  # redeliveries
    rng.shuffle(events)
    return events


@pytest.mark.parametrize("seed", range(5))
def test_reordered_input_is_applied_in_sequence_once(seed: int) -> None:
    guard: OrderingGuard[tuple[str, int]] = OrderingGuard()
    applied: dict[str, list[int]] = {}
    events = shuffled_with_duplicates(entities=4, per_entity=30, seed=seed)
    per_entity = [[n for entity, n in events if entity == f"e{e}"] for e in range(4)]
    assert all(seq != sorted(seq) for seq in per_entity)  # really reordered
    for entity, n in events:
        for ready in guard.accept(entity, n, (entity, n)):
            applied.setdefault(ready[0], []).append(ready[1])
    assert applied == {f"e{e}": list(range(1, 31)) for e in range(4)}
    assert guard.stale == len(events) - 120
    assert all(guard.parked(f"e{e}") == [] for e in range(4))


def test_stale_events_are_ignored_and_early_ones_wait() -> None:
    guard: OrderingGuard[str] = OrderingGuard()
    guard.seed("order-1", 2)
    assert guard.accept("order-1", 2, "paid again") == []  # stale
    assert guard.accept("order-1", 5, "delivered") == []  # parked
    assert guard.accept("order-1", 4, "shipped") == []
    assert guard.parked("order-1") == [4, 5]
    assert guard.accept("order-1", 3, "packed") == ["packed", "shipped", "delivered"]
    assert guard.last("order-1") == 5


def test_skip_applies_early_events_and_makes_the_gap_stale() -> None:
    guard: OrderingGuard[str] = OrderingGuard(on_gap="skip")
    assert guard.accept("a", 3, "third") == ["third"]
    assert guard.accept("a", 2, "second") == []
    assert guard.stale == 1


def test_a_gap_that_never_fills_is_given_up_after_max_parked() -> None:
    guard: OrderingGuard[int] = OrderingGuard(max_parked=3)
    assert [guard.accept("a", n, n) for n in (3, 4, 5)] == [[], [], []]
    assert guard.accept("a", 6, 6) == [3, 4, 5, 6]
    assert guard.accept("a", 2, 2) == []  # the missing one, too late


def test_classify() -> None:
    assert [classify(4, n) for n in (3, 4, 5, 7)] == [
        Verdict.STALE,
        Verdict.STALE,
        Verdict.APPLY,
        Verdict.EARLY,
    ]


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        OrderingGuard(on_gap="drop")  # type: ignore[arg-type]
