"""The inbox on PostgreSQL (SQLite: tests/patterns)."""

from __future__ import annotations

import pytest

from tests.patterns import inbox_cases


@pytest.mark.asyncio
async def test_lost_ack_redelivers_and_applies_once(postgres_url: str) -> None:
    await inbox_cases.check_lost_ack_redelivers_and_applies_once(postgres_url)


@pytest.mark.asyncio
async def test_failed_attempt_leaves_nothing(postgres_url: str) -> None:
    await inbox_cases.check_failed_attempt_leaves_nothing(postgres_url)


@pytest.mark.asyncio
async def test_inbox_and_outbox_share_the_transaction(postgres_url: str) -> None:
    await inbox_cases.check_inbox_and_outbox_share_the_transaction(postgres_url)
