"""The orchestrated saga cases of tests/patterns/test_saga_orchestrator.py on PostgreSQL,
where two orchestrators really run at once (no single writer)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from eventbus.patterns.sagas import SequenceStore, SQLSequenceStore
from eventbus.patterns.sql import Database
from tests.patterns.test_saga_orchestrator import (
    CASES,
    check_a_compensation_that_keeps_failing_parks_the_saga,
)
from tests.patterns.test_saga_ordering import CASES as ORDERING_CASES
from tests.patterns.test_saga_outbox import check_saga_state_and_its_messages_commit_together


@pytest.mark.asyncio
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_saga_on_postgres(case: Callable[[str], Awaitable[None]], postgres_url: str) -> None:
    await case(postgres_url)


@pytest.mark.asyncio
async def test_saga_parks_on_postgres(postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    await check_a_compensation_that_keeps_failing_parks_the_saga(postgres_url, caplog)


@pytest.mark.asyncio
@pytest.mark.parametrize("case", ORDERING_CASES, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_resequencer_on_postgres(
    case: Callable[[SequenceStore], Awaitable[None]], postgres_url: str
) -> None:
    async with await Database.connect(postgres_url) as db:
        await case(SQLSequenceStore(db))


@pytest.mark.asyncio
async def test_saga_and_outbox_commit_together_on_postgres(postgres_url: str) -> None:
    await check_saga_state_and_its_messages_commit_together(postgres_url)
