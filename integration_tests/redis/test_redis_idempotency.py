"""The Redis idempotency store passes the same store scenarios as the memory and SQLite
stores (tests/test_idempotency.py, run here against Redis), and claims atomically
across stores."""

from __future__ import annotations

import asyncio
import importlib
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from eventbus_redis import RedisIdempotencyStore

from eventbus.middleware import Claim, IdempotencyStore

# The core store scenarios. Under the whole test command pytest has already imported
# tests/test_idempotency.py as the top-level module "test_idempotency"; importing it
# again as "tests.test_idempotency" would register its event classes twice.
core = sys.modules.get("test_idempotency") or importlib.import_module("tests.test_idempotency")

SCENARIOS: list[Callable[[str, Path], None]] = [
    core.test_store_claim_complete_release,
    core.test_a_run_whose_lease_expired_cannot_release_the_next_runs_claim,
    core.test_release_never_forgets_a_done_id,
    core.test_complete_after_the_lease_expired_marks_done_and_says_so,
]


@pytest.fixture
def on_redis(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    """Make the core scenarios open a Redis store (own key prefix per scenario)."""

    @asynccontextmanager
    async def open_store(kind: str, tmp_path: Path) -> AsyncIterator[IdempotencyStore]:
        store = RedisIdempotencyStore(redis_url, prefix=f"test:{uuid.uuid4().hex}:")
        try:
            yield store
        finally:
            await store.close()

    monkeypatch.setattr(core, "open_store", open_store)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__)
def test_redis_store_passes_the_core_store_scenarios(
    scenario: Callable[[str, Path], None], on_redis: None, tmp_path: Path
) -> None:
    scenario("redis", tmp_path)


def test_concurrent_claims_from_two_stores_claim_each_id_once(redis_url: str) -> None:
    prefix = f"test:{uuid.uuid4().hex}:"
    keys = [f"group:{uuid.uuid4()}" for _ in range(100)]

    async def scenario() -> list[Claim]:
        stores = [RedisIdempotencyStore(redis_url, prefix=prefix) for _ in range(2)]
        try:
            results = await asyncio.gather(
                *(store.claim(key, 60) for key in keys for store in stores))
            return [r.status for r in results]
        finally:
            for store in stores:
                await store.close()

    statuses = asyncio.run(scenario())
    for index in range(len(keys)):
        pair = sorted(s.value for s in statuses[2 * index:2 * index + 2])
        assert pair == ["claimed", "in_progress"], keys[index]


def test_an_unreachable_store_raises_so_the_message_is_redelivered() -> None:
    async def scenario() -> None:
        store = RedisIdempotencyStore("redis://127.0.0.1:1/0?connect_timeout=0.5")
        try:
            with pytest.raises(Exception):  # noqa: B017 - the middleware wraps any error
                await asyncio.wait_for(store.claim("k", 60), 30)
        finally:
            await store.close()

    asyncio.run(scenario())
