"""The idempotent producer: on by default where the broker has it, never hard-wired off.

Apache Kafka grants a producer id (InitProducerId); Tansu refuses it, and the
adapter then falls back, with a warning, unless told ``enable_idempotence=true``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from eventbus_kafka import KafkaAdapter

from eventbus.envelope import Envelope
from eventbus.errors import BrokerConnectionError
from integration_tests import harness

pytestmark = [pytest.mark.broker("kafka"), pytest.mark.timeout(120)]


def _url(endpoint: harness.Endpoint, option: str = "") -> str:
    url = harness.client_url(endpoint)
    if not option:
        return url
    return url + ("&" if "?" in url else "?") + option


async def _connect_and_publish(url: str) -> bool | None:
    adapter = KafkaAdapter(url)
    try:
        await adapter.connect()
        envelope = Envelope.create(type="test.idempotence", source="tests", data=b"{}")
        await adapter.publish(f"idem-{uuid.uuid4().hex[:10]}", [envelope])
        health = await adapter.health()
        assert health.info["idempotent_producer"] == str(adapter.idempotent).lower()
        return adapter.idempotent
    finally:
        await adapter.close()


def _apache() -> harness.Endpoint:
    endpoint, _ = harness.require_faulty("kafka", "apache")
    return endpoint


def _tansu() -> harness.Endpoint:
    endpoint, _ = harness.require_faulty("kafka", "tansu")
    return endpoint


def test_apache_kafka_gets_the_idempotent_producer_by_default() -> None:
    assert asyncio.run(_connect_and_publish(_url(_apache()))) is True


def test_idempotence_can_be_turned_off() -> None:
    assert asyncio.run(_connect_and_publish(_url(_apache(), "enable_idempotence=false"))) is False


def test_tansu_falls_back_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="eventbus.kafka"):
        assert asyncio.run(_connect_and_publish(_url(_tansu()))) is False
    assert any("no idempotent producer" in r.getMessage() for r in caplog.records)


def test_required_idempotence_on_a_broker_without_it_is_a_clear_error() -> None:
    with pytest.raises(BrokerConnectionError, match="refused the idempotent producer") as info:
        asyncio.run(_connect_and_publish(_url(_tansu(), "enable_idempotence=true")))
    assert "enable_idempotence=auto" in str(info.value)
