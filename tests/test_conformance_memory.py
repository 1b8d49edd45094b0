"""The whole conformance suite on the in-memory adapter, fault hooks included."""

from __future__ import annotations

import pytest

from eventbus.memory import MemoryAdapter
from eventbus.testing import BrokerTarget, ConformanceSuite


@pytest.fixture
def target() -> BrokerTarget:
    """The process-wide memory broker; its fault hooks drop and refuse connections."""
    return BrokerTarget(
        name="memory",
        url="memory://",
        faults=MemoryAdapter("memory://").faults,
        faulty_url="memory://",
    )


class TestMemoryConformance(ConformanceSuite):
    """Everything the real adapters must do, the memory adapter does too."""
