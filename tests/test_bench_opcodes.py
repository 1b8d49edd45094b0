"""``bench/opcodes.py`` counts a run's opcodes per function: the figures the bench
README gives for where the default chain's time goes come from it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import opcodes


def test_each_delivery_is_one_runner_call_and_idempotency_adds_its_steps() -> None:
    off, calls = opcodes.count("off", 60, 20, single=False)
    assert calls[("runner.py", "handle")] == 60  # one per event, nothing counted twice
    assert off[("runner.py", "handle")] > 60
    idempotent, idempotent_calls = opcodes.count("idempotency", 60, 20, single=False)
    assert idempotent_calls[("idempotency.py", "claim_now")] == 60
    assert ("idempotency.py", "claim_now") not in off
    assert sum(idempotent.values()) > sum(off.values())
