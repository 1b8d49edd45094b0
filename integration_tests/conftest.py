"""Real-broker fixtures. Discovery and policy live in :mod:`integration_tests.harness`."""

from __future__ import annotations

import pytest

from integration_tests import harness


@pytest.fixture(scope="session")
def broker_endpoint(request: pytest.FixtureRequest) -> harness.Endpoint:
    """Endpoint for the broker named by indirect parametrisation.

    ``@pytest.mark.parametrize("broker_endpoint", ["redis", "nats"], indirect=True)``
    """
    return harness.require(request.param)


@pytest.fixture(scope="session")
def kafka_endpoint() -> harness.Endpoint:
    return harness.require("kafka")


@pytest.fixture(scope="session")
def rabbitmq_endpoint() -> harness.Endpoint:
    return harness.require("rabbitmq")


@pytest.fixture(scope="session")
def redis_endpoint() -> harness.Endpoint:
    return harness.require("redis")


@pytest.fixture(scope="session")
def nats_endpoint() -> harness.Endpoint:
    return harness.require("nats")


@pytest.fixture(scope="session")
def sqs_endpoint() -> harness.Endpoint:
    return harness.require("sqs")


@pytest.fixture(scope="session")
def faulty_kafka() -> tuple[harness.Endpoint, harness.FaultProxy]:
    """A harness Tansu whose every connection goes through a FaultProxy."""
    return harness.require_faulty("kafka")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    harness.shutdown()
