"""The public outbox suite (eventbus.testing.patterns.OutboxSuite: the outbox, its relay
and the inbox) on SQLite, and which refusals park a row. PostgreSQL:
integration_tests/patterns/test_store_suites_postgres.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventbus.errors import (
    BatchPublishError,
    BrokerConnectionError,
    ConfigurationError,
    ConnectionLostError,
    InfrastructureError,
    MessageTooLargeError,
    PublishError,
    is_permanent_refusal,
)
from eventbus.testing.patterns import OutboxSuite, OutboxTarget
from eventbus.testing.patterns.relay_faults import PERMANENT
from tests.patterns.stores import outbox_target as target_at


@pytest.fixture
def outbox_target(tmp_path: Path) -> OutboxTarget:
    return target_at(f"sqlite:///{tmp_path}/outbox.sqlite")


class TestOutbox(OutboxSuite):
    """Every outbox, relay and inbox case of the public suite, on SQLite."""


@pytest.mark.parametrize("error", [*PERMANENT, ConfigurationError("x")])
def test_permanent_refusals(error: Exception) -> None:
    assert is_permanent_refusal(error)


@pytest.mark.parametrize(
    "error",
    [
        BrokerConnectionError("down"),
        ConnectionLostError("dropped"),
        PublishError("no confirm"),
        InfrastructureError("store"),
        TimeoutError(),
        OSError("reset"),
        RuntimeError("?"),
    ],
)
def test_failures_worth_retrying(error: Exception) -> None:
    assert not is_permanent_refusal(error)


def test_a_batch_refusal_is_permanent_only_when_every_failure_is() -> None:
    too_large, down = MessageTooLargeError("big"), BrokerConnectionError("down")
    assert is_permanent_refusal(BatchPublishError("x", {0: too_large, 2: too_large}, 3))
    assert not is_permanent_refusal(BatchPublishError("x", {0: too_large, 1: down}, 3))
