"""Real brokers for the integration tests: discovery, local processes, fault proxies.

See :mod:`integration_tests.harness.endpoints` for the discovery order, the
environment variables and the URL shapes; ``docs/brokers.md`` for the guide.
"""

from eventbus.testing.faultproxy import FaultProxy

from .endpoints import (
    BROKERS,
    BrokerUnavailableError,
    Endpoint,
    get_endpoint,
    get_faulty_endpoint,
    require,
    require_faulty,
    required_brokers,
    shutdown,
)

# Tansu holds a JoinGroup for about half the session timeout, so with the client
# defaults (10 s) every subscribe would take 5 s. A Kafka found elsewhere keeps
# its own group.min.session.timeout.ms (6 s by default), so only a Tansu the
# harness started gets these; Apache Kafka runs with the client defaults.
TANSU_FAST_GROUPS = "session_timeout=2&heartbeat_interval=0.5&rebalance_timeout=3"


def client_url(endpoint: Endpoint) -> str:
    """The eventbus URL to use for ``endpoint``, tuned for the broker build behind it."""
    if endpoint.name != "kafka" or endpoint.flavour != "tansu":
        return endpoint.url
    joiner = "&" if "?" in endpoint.url else "?"
    return f"{endpoint.url}{joiner}{TANSU_FAST_GROUPS}"


__all__ = [
    "BROKERS",
    "TANSU_FAST_GROUPS",
    "BrokerUnavailableError",
    "Endpoint",
    "FaultProxy",
    "client_url",
    "get_endpoint",
    "get_faulty_endpoint",
    "require",
    "require_faulty",
    "required_brokers",
    "shutdown",
]
