"""The event store, repository and relay on a real PostgreSQL (a fresh database per
test); the same bodies as the memory and SQLite runs in tests/patterns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.patterns import es_cases
from tests.patterns.test_es_store import CASES

pytestmark = [pytest.mark.asyncio, pytest.mark.broker("postgres")]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_store(case: Callable[[str], Awaitable[None]], postgres_url: str) -> None:
    await case(postgres_url)


async def test_gap_safe_reader_with_many_writers(postgres_url: str) -> None:
    await es_cases.check_gap_safe_reader(postgres_url, writers=8, appends=15)


@pytest.mark.parametrize("killed", ["before", "after"])
async def test_a_killed_relay_loses_nothing(postgres_url: str, killed: str) -> None:
    from tests.patterns import test_es_relay

    await test_es_relay.test_a_killed_relay_loses_nothing(postgres_url, killed)
