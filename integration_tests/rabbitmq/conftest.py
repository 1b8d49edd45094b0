"""The RabbitMQ adapter's own tests reach the broker through the shared harness
(``rabbitmq_endpoint`` in ``integration_tests/conftest.py``)."""

import pytest

from integration_tests import harness
from integration_tests.rabbitmq.node import Node, conformance_node


@pytest.fixture(scope="session")
def rabbitmq_url(rabbitmq_endpoint: harness.Endpoint) -> str:
    """The shared broker's URL (guest/guest)."""
    return rabbitmq_endpoint.url


@pytest.fixture(scope="session")
def private_node() -> Node:
    """The private node (node.py) whose node-wide settings a test may change; without
    the rabbitmq-server package such tests fail under EVENTBUS_REQUIRE_BROKERS, else skip."""
    harness.require("rabbitmq")
    node = conformance_node()
    if node.ctl is None or node.direct_url is None:
        reason = "no private RabbitMQ node (install rabbitmq-server): node-wide settings"
        if "rabbitmq" in harness.required_brokers():
            pytest.fail(f"{reason} (required by EVENTBUS_REQUIRE_BROKERS)", pytrace=False)
        pytest.skip(reason)
    return node
