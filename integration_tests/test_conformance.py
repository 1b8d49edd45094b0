"""The conformance suite against every real broker that has an adapter.

One parametrised fixture gives the suite a :class:`BrokerTarget` per broker; the
cases themselves live in :mod:`eventbus.testing` and are the same ones the memory
adapter passes. A broker that cannot be had is skipped, or fails the run when
``EVENTBUS_REQUIRE_BROKERS`` names it (CI sets ``all``).
"""

from __future__ import annotations

import pytest

from eventbus.testing import BrokerTarget, ConformanceSuite
from integration_tests import harness

# Cases a particular broker build can't pass although the adapter claims the
# capability, with the reason. Each is documented in docs/adapters/<broker>.md.
TANSU_LIMITS: dict[str, str] = {}

# Message counts of heavy cases, scaled per broker: slow brokers get fewer
# messages rather than a skipped case.
SCALE = {"kafka": 0.25}

BROKERS_WITH_ADAPTERS = ["kafka"]


def _target(name: str) -> BrokerTarget:
    # Kafka clients reconnect to the advertised address, so the fault proxy can only
    # sit in front of a Tansu the harness starts with the proxy as its advertised
    # listener: the suite then uses that broker for every case.
    endpoint, proxy = harness.require_faulty(name)
    url = harness.client_url(endpoint)
    return BrokerTarget(
        name=name,
        url=url,
        faults=proxy,
        faulty_url=url,
        scale=SCALE.get(name, 1.0),
        limits=TANSU_LIMITS if name == "kafka" else {},
        restart=endpoint.restart,
    )


@pytest.fixture(scope="module", params=BROKERS_WITH_ADAPTERS)
def target(request: pytest.FixtureRequest) -> BrokerTarget:
    """One real broker at a time, reached through a fault proxy."""
    return _target(str(request.param))


class TestConformance(ConformanceSuite):
    """The shared suite, run per broker."""
