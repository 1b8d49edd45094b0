"""docs/observability.md holds: every code block of it runs, in order, as one script."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.doc_blocks import blocks

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "observability.md"


def test_every_python_block_of_the_observability_page_runs() -> None:
    env = {k: v for k, v in os.environ.items() if k != "EVENTBUS_URL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "doc_blocks.py"), str(PAGE)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    ran = int(re.search(r"(\d+) block\(s\) ran", done.stdout).group(1))  # type: ignore[union-attr]
    assert ran == sum(1 for b in blocks(PAGE) if b.marker is None) >= 4
