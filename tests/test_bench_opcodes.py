"""``bench/opcodes.py`` counts a run's opcodes per function: the figures the bench
README gives for where the default chain's time goes come from it. It runs in a
process of its own here: it replaces the process's trace function while it counts,
which a coverage run of the suite uses too."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "opcodes.py"


def _rows(*args: str) -> dict[str, tuple[float, float]]:
    """function -> (opcodes, calls) per event, as the script prints them."""
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--events", "60", "--chunk", "20", "--top", "200", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    rows = {}
    for line in out.splitlines():
        found = re.fullmatch(r"\s+([\d.]+)\s+([\d.]+)\s+(\S+)", line)
        if found:
            rows[found.group(3)] = (float(found.group(1)), float(found.group(2)))
    return rows


def test_each_delivery_is_one_runner_call_and_idempotency_adds_its_steps() -> None:
    off = _rows()
    assert off["runner.py:handle"][1] == 1.0  # one call per event, nothing counted twice
    assert off["runner.py:handle"][0] > 1.0
    assert "idempotency.py:claim_now" not in off
    idempotent = _rows("--case", "idempotency")
    assert idempotent["idempotency.py:claim_now"][1] == 1.0


def test_the_previous_trace_function_is_put_back() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import opcodes
    finally:
        sys.path.remove(str(SCRIPT.parent))

    def mine(frame: object, event: str, arg: object) -> None:
        return None

    previous = sys.gettrace()
    sys.settrace(mine)
    try:
        opcodes.count("off", 20, 10, single=False)
        assert sys.gettrace() is mine
    finally:
        sys.settrace(previous)
