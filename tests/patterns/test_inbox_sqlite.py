"""The inbox on SQLite (PostgreSQL: integration_tests/patterns)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.patterns import inbox_cases


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/inbox.sqlite"


@pytest.mark.asyncio
async def test_lost_ack_redelivers_and_applies_once(sqlite_url: str) -> None:
    await inbox_cases.check_lost_ack_redelivers_and_applies_once(sqlite_url)


@pytest.mark.asyncio
async def test_failed_attempt_leaves_nothing(sqlite_url: str) -> None:
    await inbox_cases.check_failed_attempt_leaves_nothing(sqlite_url)


@pytest.mark.asyncio
async def test_inbox_and_outbox_share_the_transaction(sqlite_url: str) -> None:
    await inbox_cases.check_inbox_and_outbox_share_the_transaction(sqlite_url)
