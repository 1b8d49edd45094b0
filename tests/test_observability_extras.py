"""The core imports and runs without the observability extras (opentelemetry-api,
prometheus-client), and asking for tracing or metrics without them says what to
install. Checked in a subprocess where those modules cannot be found."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent('''
    import asyncio
    import sys

    class Hidden:
        """Acts as if the extras were not installed."""
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("opentelemetry", "prometheus_client"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Hidden())

    from eventbus import Event, EventBus
    from eventbus.metrics import Metrics

    class Ping(Event, type="extras.ping", topic="extras-pings"):
        n: int

    async def main() -> None:
        bus = EventBus("memory://extras", source="extras")
        # Counting into a store of its own needs neither library.
        Metrics(registry=None).instrument(bus)
        seen = asyncio.Event()

        @bus.subscribe(Ping, group="g")
        async def handle(event: Ping) -> None:
            seen.set()

        async with bus:
            await bus.publish(Ping(n=1))
            await asyncio.wait_for(seen.wait(), 5)

    asyncio.run(main())
    for attempt in ("import eventbus.tracing", "Metrics()",
                    "Metrics(registry=None, meter_provider=object())"):
        try:
            exec(attempt)
        except ModuleNotFoundError as exc:
            print(f"{attempt}: {exc}")
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("opentelemetry",
                                                                  "prometheus_client"))
    print(f"loaded: {loaded}")
''')


def test_the_core_runs_without_the_observability_extras() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[-1] == "loaded: []"
    said = "\n".join(lines[:-1])
    assert "import eventbus.tracing: eventbus.tracing needs opentelemetry-api" in said
    assert 'pip install "eventbus[otel]"' in said
    assert "Metrics(): Metrics exports to prometheus-client" in said
    assert 'pip install "eventbus[prometheus]"' in said
    assert (
        "Metrics(registry=None, meter_provider=object()): Metrics(meter_provider=...) "
        "needs opentelemetry-api" in said
    )
