"""Real-broker fixtures. Discovery and policy live in :mod:`integration_tests.harness`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from eventbus.testing.faultproxy import heal_all
from integration_tests import harness
from integration_tests.harness import postgres


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-long",
        action="store_true",
        default=False,
        help="run the chaos scenarios' long profile (integration_tests/chaos; "
        "also EVENTBUS_CHAOS=long)",
    )


@pytest.fixture(autouse=True)
def _faults_end_with_their_test() -> Iterator[None]:
    """A test that ends, or fails, while a fault proxy refuses, is frozen or slowed
    leaves the brokers behind that proxy working for the tests after it (the
    conformance suite heals its own target too; this covers every other test)."""
    yield
    heal_all()


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


@pytest_asyncio.fixture
async def postgres_url() -> AsyncIterator[str]:
    """The URL of a fresh PostgreSQL database, dropped when the test ends."""
    try:
        async with postgres.fresh_database() as url:
            yield url
    except postgres.PostgresUnavailableError as exc:
        if "postgres" in harness.endpoints.required_brokers():
            pytest.fail(f"{exc}\n(required by EVENTBUS_REQUIRE_BROKERS)", pytrace=False)
        pytest.skip(str(exc))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    harness.shutdown()
