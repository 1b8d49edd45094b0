"""Issue #19's property on SQLite (PostgreSQL: integration_tests/patterns/
test_es_property_postgres.py): any interleaving of appends, snapshots, loads and two
concurrent projectors, one rebuilding, ends with read model == replay of the store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

from tests.patterns import es_property_cases as cases


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cases.World]:
    path: Path = tmp_path_factory.mktemp("es-property") / "es.db"
    with cases.world(f"sqlite:///{path}") as opened:
        yield opened


@cases.SETTINGS
@given(plan=cases.steps, every=cases.snapshot_every)
def test_read_model_equals_replay_under_any_interleaving(
    world: cases.World, plan: list[list[Any]], every: int
) -> None:
    world.run(cases.check_case(world, plan, every))
