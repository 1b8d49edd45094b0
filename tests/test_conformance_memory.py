"""The whole conformance suite on the in-memory adapter, fault hooks included."""

from __future__ import annotations

import asyncio

import pytest

from eventbus.memory import MemoryAdapter
from eventbus.testing import BrokerTarget, ConformanceSuite


@pytest.fixture
def target() -> BrokerTarget:
    """The process-wide memory broker; its fault hooks drop and refuse connections."""
    faults = MemoryAdapter("memory://").faults

    async def restart() -> None:
        # The in-process broker's data lives as long as the process: a restart is
        # every connection lost and new ones refused for a moment, then back.
        await faults.refuse_connections(0.3)
        await asyncio.sleep(0.3)

    return BrokerTarget(
        name="memory",
        url="memory://",
        faults=faults,
        faulty_url="memory://",
        restart=restart,
    )


class TestMemoryConformance(ConformanceSuite):
    """Everything the real adapters must do, the memory adapter does too."""
