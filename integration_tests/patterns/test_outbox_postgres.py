"""The transactional outbox on PostgreSQL (SQLite: tests/patterns)."""

from __future__ import annotations

import pytest

from tests.patterns import outbox_cases, outbox_hardening_cases


@pytest.mark.asyncio
async def test_state_and_events_commit_together(postgres_url: str) -> None:
    await outbox_cases.check_state_and_events_commit_together(postgres_url)


@pytest.mark.asyncio
async def test_context_publish_goes_to_outbox(postgres_url: str) -> None:
    await outbox_cases.check_context_publish_goes_to_outbox(postgres_url)


@pytest.mark.asyncio
async def test_relay_death_republishes_and_consumer_dedupes(postgres_url: str) -> None:
    await outbox_cases.check_relay_death_republishes_and_consumer_dedupes(postgres_url)


@pytest.mark.asyncio
async def test_two_relays_publish_each_row_once_in_order(postgres_url: str) -> None:
    await outbox_cases.check_two_relays_publish_each_row_once_in_order(postgres_url)


@pytest.mark.asyncio
async def test_broker_down_backs_off_visibly(postgres_url: str) -> None:
    await outbox_cases.check_broker_down_backs_off_visibly(postgres_url)


@pytest.mark.asyncio
async def test_cleanup_keeps_unsent_and_recent(postgres_url: str) -> None:
    await outbox_cases.check_cleanup_keeps_unsent_and_recent(postgres_url)


@pytest.mark.asyncio
async def test_stop_finishes_the_batch_in_flight(postgres_url: str) -> None:
    await outbox_cases.check_stop_finishes_the_batch_in_flight(postgres_url)


@pytest.mark.asyncio
async def test_a_refused_row_is_parked_and_holds_only_its_stream(postgres_url: str) -> None:
    await outbox_cases.check_a_refused_row_is_parked_and_holds_only_its_stream(postgres_url)


@pytest.mark.asyncio
@pytest.mark.parametrize("refusal", outbox_hardening_cases.PERMANENT,
                         ids=lambda e: type(e).__name__)
async def test_a_permanent_refusal_parks_only_its_row(postgres_url: str,
                                                       refusal: Exception) -> None:
    await outbox_hardening_cases.check_a_permanent_refusal_parks_only_its_row(postgres_url,
                                                                              refusal)


@pytest.mark.asyncio
async def test_an_unresponsive_broker_blocks_no_database_write(postgres_url: str) -> None:
    await outbox_hardening_cases.check_an_unresponsive_broker_blocks_no_database_write(
        postgres_url)


@pytest.mark.asyncio
async def test_a_dead_relays_claim_comes_back_after_its_lease(postgres_url: str) -> None:
    await outbox_hardening_cases.check_a_dead_relays_claim_comes_back_after_its_lease(
        postgres_url)


@pytest.mark.asyncio
async def test_an_outbox_table_of_an_earlier_release_is_upgraded(postgres_url: str) -> None:
    await outbox_hardening_cases.check_an_outbox_table_of_an_earlier_release_is_upgraded(
        postgres_url)
