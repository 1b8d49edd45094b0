"""The mutation check itself: a mutant the suite cannot catch must fail it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "mutants.py"


def test_a_surviving_mutant_fails_the_check() -> None:
    """The control mutant changes nothing, so every selected case passes: the script
    must report it as SURVIVED and exit non-zero (as ``make test`` then does)."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "no change"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "SURVIVED" in done.stdout
    assert "not killed" in done.stderr


def test_an_unknown_mutant_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "no such mutant"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2
    assert "skip lane routing" in done.stderr
