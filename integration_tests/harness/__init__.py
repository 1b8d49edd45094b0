"""Real brokers for the integration tests: discovery, local processes, fault proxies.

See :mod:`integration_tests.harness.endpoints` for the discovery order, the
environment variables and the URL shapes; ``docs/brokers.md`` for the guide.
"""

from eventbus.testing.faultproxy import FaultProxy

from .endpoints import (
    BROKERS,
    BrokerUnavailable,
    Endpoint,
    get_endpoint,
    get_faulty_endpoint,
    require,
    require_faulty,
    required_brokers,
    shutdown,
)

__all__ = [
    "BROKERS",
    "BrokerUnavailable",
    "Endpoint",
    "FaultProxy",
    "get_endpoint",
    "get_faulty_endpoint",
    "require",
    "require_faulty",
    "required_brokers",
    "shutdown",
]
