"""tests/patterns/test_schema.py's cases on PostgreSQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.patterns.test_schema import CASES


@pytest.mark.asyncio
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_schema_on_postgres(
    case: Callable[[str], Awaitable[None]], postgres_url: str
) -> None:
    await case(postgres_url)
