"""Issue #19's property on a real PostgreSQL (the SQLite run is
tests/patterns/test_es_property.py): any interleaving of appends, snapshots, loads and
two concurrent projectors, one rebuilding, ends with read model == replay."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given

from tests.patterns import es_property_cases as cases

pytestmark = pytest.mark.broker("postgres")


@pytest.fixture
def world(postgres_url: str) -> Iterator[cases.World]:
    with cases.world(postgres_url) as opened:
        yield opened


@cases.SETTINGS
@given(plan=cases.steps, every=cases.snapshot_every)
def test_read_model_equals_replay_under_any_interleaving(
    world: cases.World, plan: list[list[Any]], every: int
) -> None:
    world.run(cases.check_case(world, plan, every))
