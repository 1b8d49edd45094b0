"""The RabbitMQ adapter's own tests reach the broker through the shared harness
(``rabbitmq_endpoint`` in ``integration_tests/conftest.py``)."""

import pytest

from integration_tests import harness


@pytest.fixture(scope="session")
def rabbitmq_url(rabbitmq_endpoint: harness.Endpoint) -> str:
    """The shared broker's URL (guest/guest)."""
    return rabbitmq_endpoint.url
