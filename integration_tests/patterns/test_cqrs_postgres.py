"""Projections on a real PostgreSQL (a fresh database per test); the same checks as
tests/patterns/test_cqrs_projections.py runs on SQLite."""

from __future__ import annotations

import pytest

from tests.patterns import cqrs_cases

pytestmark = [pytest.mark.asyncio, pytest.mark.broker("postgres")]


async def test_catch_up_and_read_your_write(postgres_url: str) -> None:
    await cqrs_cases.check_catch_up_and_read_your_write(postgres_url)


async def test_crash_between_write_and_checkpoint_applies_once(postgres_url: str) -> None:
    await cqrs_cases.check_crash_between_write_and_checkpoint(postgres_url)


async def test_concurrent_projectors_apply_once(postgres_url: str) -> None:
    await cqrs_cases.check_concurrent_projectors_apply_once(postgres_url)


async def test_rebuild_from_zero(postgres_url: str) -> None:
    await cqrs_cases.check_rebuild_from_zero(postgres_url)


async def test_bus_fed_once_per_event_id(postgres_url: str) -> None:
    await cqrs_cases.check_bus_fed_once_per_event_id(postgres_url)


async def test_shop_example(postgres_url: str) -> None:
    """examples/cqrs_shop with its write and read models in PostgreSQL."""
    await cqrs_cases.check_shop_example(postgres_url)


async def test_rebuild_fences_a_stale_projector(postgres_url: str) -> None:
    await cqrs_cases.check_rebuild_fences_a_stale_projector(postgres_url)


async def test_bus_fed_apply_failure_is_not_swallowed(postgres_url: str) -> None:
    await cqrs_cases.check_bus_fed_apply_failure_is_not_swallowed(postgres_url)


async def test_failing_events_are_parked(postgres_url: str) -> None:
    await cqrs_cases.check_failing_events_are_parked(postgres_url)


async def test_seen_ids_pruned_by_age(postgres_url: str) -> None:
    await cqrs_cases.check_seen_ids_pruned_by_age(postgres_url)
