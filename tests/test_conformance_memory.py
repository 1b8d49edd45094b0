"""The whole conformance suite on the in-memory adapter, fault hooks included."""

from __future__ import annotations

import pytest

from eventbus.memory import MemoryAdapter
from eventbus.testing import BrokerTarget, ConformanceSuite

# The test id is the broker column of the generated conformance matrix.
MODES = {"memory": "memory://", "memory-structured": "memory://?mode=structured"}


@pytest.fixture(params=list(MODES))
def target(request: pytest.FixtureRequest) -> BrokerTarget:
    """The process-wide memory broker in each encoding mode (binary, the default, and
    structured); its fault hooks drop and refuse connections."""
    url = MODES[request.param]
    return BrokerTarget(
        name=request.param,
        url=url,
        faults=MemoryAdapter("memory://").faults,
        faulty_url=url,
    )


class TestMemoryConformance(ConformanceSuite):
    """Everything the real adapters must do, the memory adapter does too."""
