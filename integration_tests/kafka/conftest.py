"""The Kafka adapter's own tests reach the broker through the shared harness.

``integration_tests/conftest.py`` provides ``kafka_endpoint`` (env URL, container,
local service or a Tansu process). Against Tansu the URL gets short group
timeouts: Tansu holds a JoinGroup for about half the session timeout, so the
defaults (10 s) would make every subscribe take 5 s.
"""

from __future__ import annotations

import pytest

from integration_tests import harness


@pytest.fixture(scope="session")
def kafka_url(kafka_endpoint: harness.Endpoint) -> str:
    """The broker URL for the adapter, tuned for fast rebalances on Tansu."""
    return harness.client_url(kafka_endpoint)
