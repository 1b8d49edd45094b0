"""Fixtures of the Redis adapter tests: the harness's Redis, as URLs of both modes."""

from __future__ import annotations

import pytest

from integration_tests import harness


@pytest.fixture(scope="session")
def redis_url() -> str:
    """``redis://host:port/db`` of the harness's Redis (fails if required and missing)."""
    return harness.require("redis").url


@pytest.fixture(scope="session")
def streams_url(redis_url: str) -> str:
    return redis_url.replace("redis://", "redis+streams://", 1)
