"""The transactional outbox on SQLite (PostgreSQL: integration_tests/patterns)."""

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
from tests.patterns import outbox_cases, outbox_hardening_cases


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/outbox.sqlite"


@pytest.mark.asyncio
async def test_state_and_events_commit_together(sqlite_url: str) -> None:
    await outbox_cases.check_state_and_events_commit_together(sqlite_url)


@pytest.mark.asyncio
async def test_context_publish_goes_to_outbox(sqlite_url: str) -> None:
    await outbox_cases.check_context_publish_goes_to_outbox(sqlite_url)


@pytest.mark.asyncio
async def test_relay_death_republishes_and_consumer_dedupes(sqlite_url: str) -> None:
    await outbox_cases.check_relay_death_republishes_and_consumer_dedupes(sqlite_url)


@pytest.mark.asyncio
async def test_two_relays_publish_each_row_once_in_order(sqlite_url: str) -> None:
    await outbox_cases.check_two_relays_publish_each_row_once_in_order(sqlite_url)


@pytest.mark.asyncio
async def test_broker_down_backs_off_visibly(sqlite_url: str) -> None:
    await outbox_cases.check_broker_down_backs_off_visibly(sqlite_url)


@pytest.mark.asyncio
async def test_cleanup_keeps_unsent_and_recent(sqlite_url: str) -> None:
    await outbox_cases.check_cleanup_keeps_unsent_and_recent(sqlite_url)


@pytest.mark.asyncio
async def test_stop_finishes_the_batch_in_flight(sqlite_url: str) -> None:
    await outbox_cases.check_stop_finishes_the_batch_in_flight(sqlite_url)


@pytest.mark.asyncio
async def test_a_refused_row_is_parked_and_holds_only_its_stream(sqlite_url: str) -> None:
    await outbox_cases.check_a_refused_row_is_parked_and_holds_only_its_stream(sqlite_url)


@pytest.mark.asyncio
@pytest.mark.parametrize("refusal", outbox_hardening_cases.PERMANENT,
                         ids=lambda e: type(e).__name__)
async def test_a_permanent_refusal_parks_only_its_row(sqlite_url: str, refusal: Exception) -> None:
    await outbox_hardening_cases.check_a_permanent_refusal_parks_only_its_row(sqlite_url, refusal)


@pytest.mark.asyncio
async def test_an_unresponsive_broker_blocks_no_database_write(sqlite_url: str) -> None:
    await outbox_hardening_cases.check_an_unresponsive_broker_blocks_no_database_write(sqlite_url)


@pytest.mark.asyncio
async def test_a_dead_relays_claim_comes_back_after_its_lease(sqlite_url: str) -> None:
    await outbox_hardening_cases.check_a_dead_relays_claim_comes_back_after_its_lease(sqlite_url)


@pytest.mark.asyncio
async def test_an_outbox_table_of_an_earlier_release_is_upgraded(sqlite_url: str) -> None:
    await outbox_hardening_cases.check_an_outbox_table_of_an_earlier_release_is_upgraded(
        sqlite_url)


@pytest.mark.parametrize("error", [*outbox_hardening_cases.PERMANENT, ConfigurationError("x")])
def test_permanent_refusals(error: Exception) -> None:
    assert is_permanent_refusal(error)


@pytest.mark.parametrize("error", [
    BrokerConnectionError("down"), ConnectionLostError("dropped"), PublishError("no confirm"),
    InfrastructureError("store"), TimeoutError(), OSError("reset"), RuntimeError("?")])
def test_failures_worth_retrying(error: Exception) -> None:
    assert not is_permanent_refusal(error)


def test_a_batch_refusal_is_permanent_only_when_every_failure_is() -> None:
    too_large, down = MessageTooLargeError("big"), BrokerConnectionError("down")
    assert is_permanent_refusal(BatchPublishError("x", {0: too_large, 2: too_large}, 3))
    assert not is_permanent_refusal(BatchPublishError("x", {0: too_large, 1: down}, 3))
