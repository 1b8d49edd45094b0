"""Projections on SQLite (PostgreSQL: integration_tests/patterns/test_cqrs_postgres.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.patterns import cqrs_cases

pytestmark = pytest.mark.asyncio


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/cqrs.sqlite"


async def test_catch_up_and_read_your_write(sqlite_url: str) -> None:
    await cqrs_cases.check_catch_up_and_read_your_write(sqlite_url)


async def test_crash_between_write_and_checkpoint_applies_once(sqlite_url: str) -> None:
    await cqrs_cases.check_crash_between_write_and_checkpoint(sqlite_url)


async def test_concurrent_projectors_apply_once(sqlite_url: str) -> None:
    await cqrs_cases.check_concurrent_projectors_apply_once(sqlite_url)


async def test_rebuild_from_zero(sqlite_url: str) -> None:
    await cqrs_cases.check_rebuild_from_zero(sqlite_url)


async def test_bus_fed_once_per_event_id(sqlite_url: str) -> None:
    await cqrs_cases.check_bus_fed_once_per_event_id(sqlite_url)


async def test_shop_example(sqlite_url: str) -> None:
    await cqrs_cases.check_shop_example(sqlite_url)


async def test_rebuild_fences_a_stale_projector(sqlite_url: str) -> None:
    await cqrs_cases.check_rebuild_fences_a_stale_projector(sqlite_url)


async def test_bus_fed_apply_failure_is_not_swallowed(sqlite_url: str) -> None:
    await cqrs_cases.check_bus_fed_apply_failure_is_not_swallowed(sqlite_url)


async def test_failing_events_are_parked(sqlite_url: str) -> None:
    await cqrs_cases.check_failing_events_are_parked(sqlite_url)


async def test_seen_ids_pruned_by_age(sqlite_url: str) -> None:
    await cqrs_cases.check_seen_ids_pruned_by_age(sqlite_url)
