"""The transactional outbox on SQLite (PostgreSQL: integration_tests/patterns)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.patterns import outbox_cases


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/outbox.sqlite"


@pytest.mark.asyncio
async def test_state_and_events_commit_together(sqlite_url: str) -> None:
    await outbox_cases.check_state_and_events_commit_together(sqlite_url)


@pytest.mark.asyncio
async def test_context_publish_goes_to_outbox(sqlite_url: str) -> None:
    await outbox_cases.check_context_publish_goes_to_outbox(sqlite_url)


@pytest.mark.asyncio
async def test_relay_death_republishes_and_consumer_dedupes(sqlite_url: str) -> None:
    await outbox_cases.check_relay_death_republishes_and_consumer_dedupes(sqlite_url)


@pytest.mark.asyncio
async def test_two_relays_publish_each_row_once_in_order(sqlite_url: str) -> None:
    await outbox_cases.check_two_relays_publish_each_row_once_in_order(sqlite_url)


@pytest.mark.asyncio
async def test_broker_down_backs_off_visibly(sqlite_url: str) -> None:
    await outbox_cases.check_broker_down_backs_off_visibly(sqlite_url)


@pytest.mark.asyncio
async def test_cleanup_keeps_unsent_and_recent(sqlite_url: str) -> None:
    await outbox_cases.check_cleanup_keeps_unsent_and_recent(sqlite_url)


@pytest.mark.asyncio
async def test_stop_finishes_the_batch_in_flight(sqlite_url: str) -> None:
    await outbox_cases.check_stop_finishes_the_batch_in_flight(sqlite_url)


@pytest.mark.asyncio
async def test_a_refused_row_is_parked_and_holds_only_its_stream(sqlite_url: str) -> None:
    await outbox_cases.check_a_refused_row_is_parked_and_holds_only_its_stream(sqlite_url)
