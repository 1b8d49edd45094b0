"""The user's test kit (``eventbus.testing``) imports and runs without pytest; only the
conformance suite needs it, and saying so when it is missing."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A child interpreter in which ``import pytest`` fails as if it were not installed.
_HIDE_PYTEST = textwrap.dedent("""
    import importlib.abc, sys

    class HidePytest(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "pytest" or name.startswith(("pytest.", "_pytest")):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, HidePytest())
""")


def _run_without_pytest(body: str) -> subprocess.CompletedProcess[str]:
    code = _HIDE_PYTEST + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_kit_imports_and_runs_a_bus_without_pytest() -> None:
    result = _run_without_pytest("""
        import asyncio
        import eventbus.testing as kit
        from eventbus import Event, EventBus, RetryPolicy

        assert "pytest" not in sys.modules and "_pytest" not in sys.modules

        class Placed(Event, type="nopytest.placed", topic="nopytest"):
            n: int

        bus = EventBus("memory://", retry=RetryPolicy(initial_delay=5.0))

        @bus.subscribe(Placed, group="g")
        async def handle(event: Placed) -> None:
            pass

        async def main() -> None:
            seen = kit.Collector("seen")
            async with kit.TestBus(bus) as tb:
                await tb.bus.publish(Placed(n=1))
                await tb.drain()
                seen.add(tb.received(handle)[0].n)
            assert await seen.wait_count(1, timeout=1) == [1]
            assert kit.without_delays().initial_delay == 0.0

        asyncio.run(main())
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_conformance_suite_without_pytest_says_what_to_install() -> None:
    result = _run_without_pytest("""
        import eventbus.testing
        try:
            eventbus.testing.ConformanceSuite
        except ModuleNotFoundError as error:
            print(error)
    """)
    assert result.returncode == 0, result.stderr
    assert "pip install 'eventbus[test]'" in result.stdout
    assert "works without it" in result.stdout


def test_the_conformance_suite_is_there_when_pytest_is() -> None:
    from eventbus.testing import ConformanceSuite, on_topic
    from eventbus.testing.conformance import ConformanceSuite as Suite

    assert ConformanceSuite is Suite and callable(on_topic)
