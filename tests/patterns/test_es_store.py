"""The event store and repository on memory and SQLite (PostgreSQL:
integration_tests/patterns/test_es_postgres.py); the bodies are in es_cases."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests.patterns import es_cases

CASES: list[Callable[[str], Awaitable[None]]] = [
    es_cases.check_append_and_read,
    es_cases.check_concurrent_appends_conflict,
    es_cases.check_idempotent_append,
    es_cases.check_repository,
    es_cases.check_save_retry_is_idempotent,
    es_cases.check_load_as_of_time,
    es_cases.check_snapshots,
    es_cases.check_upcasting_on_load,
    es_cases.check_gap_safe_reader,
    es_cases.check_append_in_own_transaction,
]


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/es.db"


@pytest.mark.asyncio
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_store(case: Callable[[str], Awaitable[None]], store_url: str) -> None:
    await case(store_url)
