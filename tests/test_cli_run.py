"""`eventbus run`: a service whose subscription died for good exits non-zero."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import eventbus

SERVICE = """
    from eventbus import ConfigurationError, EventBus, MemoryAdapter, Subscription

    class Broken(Subscription):
        def __aiter__(self):
            return self

        async def __anext__(self):
            raise OSError("client library hiccup (not translated)")

        async def close(self):
            pass

    class Adapter(MemoryAdapter):
        subscribes = 0

        async def subscribe(self, topic, options):
            Adapter.subscribes += 1
            if Adapter.subscribes > 1:
                raise ConfigurationError(f"topic {topic!r} no longer exists")
            return Broken()

    bus = EventBus(Adapter("memory://svc"), source="svc")

    @bus.subscribe("pings", group="svc")
    async def on_ping(envelope) -> None:
        pass
"""


def test_cli_run_exits_non_zero_when_a_subscription_dies_for_good(tmp_path: Path) -> None:
    (tmp_path / "deadsvc.py").write_text(textwrap.dedent(SERVICE))
    package_root = Path(eventbus.__file__).resolve().parent.parent  # the eventbus under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(package_root)])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventbus.cli", "run", "deadsvc:bus"],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
    )
    try:
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert "pings/svc" in err and "no longer exists" in err
