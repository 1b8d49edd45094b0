"""The whole conformance suite on the in-memory adapter, fault hooks included."""

from __future__ import annotations

import asyncio

import pytest

from eventbus import EventBus
from eventbus.memory import MemoryAdapter
from eventbus.testing import BrokerTarget, ConformanceSuite

# The test id is the broker column of the generated conformance matrix.
# memory-log hands a key's messages out without waiting for the previous one to be
# settled, like Kafka: only there do the ordering cases test the bus's key lanes.
MODES = {
    "memory": "memory://",
    "memory-structured": "memory://?mode=structured",
    "memory-log": "memory://?hold_keys=false",
}


@pytest.fixture(params=list(MODES))
def target(request: pytest.FixtureRequest) -> BrokerTarget:
    """The process-wide memory broker in each encoding mode (binary, the default, and
    structured) and as a log that does not hold keys back; its fault hooks drop and
    refuse connections."""
    url = MODES[request.param]
    faults = MemoryAdapter("memory://").faults

    async def restart() -> None:
        # The in-process broker's data lives as long as the process: a restart is
        # every connection lost and new ones refused for a moment, then back.
        await faults.refuse_connections(0.3)
        await asyncio.sleep(0.3)

    async def delete_underneath(topic: str, group: str) -> None:
        faults.delete_group(topic, group)

    return BrokerTarget(
        name=request.param,
        url=url,
        faults=faults,
        faulty_url=url,
        restart=restart,
        # The broker lives in this process: a consumer process of its own can't reach it.
        in_process=True,
        delete_underneath=delete_underneath,
    )


class TestMemoryConformance(ConformanceSuite):
    """Everything the real adapters must do, the memory adapter does too."""


def test_a_missing_capability_skips_with_its_reason() -> None:
    """The typed requirements gate cases: a target without fault hooks skips the
    reconnect cases naming what is missing and why the case needs it."""
    bare = BrokerTarget(name="bare", url="memory://")
    with pytest.raises(pytest.skip.Exception) as skipped:
        TestMemoryConformance().test_reconnect_after_connection_drop(bare)
    assert str(skipped.value) == (
        "bare lacks fault hooks (target.faults/faulty_url): the case drops the broker connections"
    )


def test_a_case_that_fails_mid_fault_leaves_the_next_a_working_broker(target: BrokerTarget) -> None:
    """A case that fails (or ends) while its refusal or freeze is in force heals the
    target as it closes (``faults.heal()``), so the next case does not start on a broker
    that still refuses: one failing case stays one failure."""
    from eventbus.testing.conformance._support import Case

    async def failing_case() -> None:
        run = Case(target, MemoryAdapter(target.url).capabilities, "test_fails_mid_fault")
        try:
            assert target.faults is not None
            await target.faults.freeze()
            await target.faults.refuse_connections(60.0)
        finally:
            await run.aclose()

    async def next_case() -> None:
        bus = EventBus(target.url)
        await asyncio.wait_for(bus.start(), 2.0)  # refused for 60 s without the heal
        await bus.stop()

    async def restore() -> None:  # without heal(): this test's failure stays its own
        assert target.faults is not None
        await target.faults.thaw()
        await target.faults.refuse_connections(0.0)

    try:
        asyncio.run(failing_case())
        asyncio.run(next_case())
    finally:
        asyncio.run(restore())
