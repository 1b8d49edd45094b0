"""``make demo``'s second half: the order saga as three ``eventbus run`` processes on one
SQLite file, orders placed from a fourth; both sagas end as expected and every service
stops cleanly on SIGTERM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_order_saga_as_three_processes_on_sqlite() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.order_saga.processes"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "completed as expected" in done.stdout and "cancelled as expected" in done.stdout
