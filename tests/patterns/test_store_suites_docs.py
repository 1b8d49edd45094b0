"""The store suites page's test file, run by pytest as a third party would: every case
of both suites passes on the stores it names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.doc_blocks import blocks
from tests.test_docs import DOCS, ROOT

PAGE = DOCS / "patterns" / "store-suites.md"


def test_the_page_s_test_file_passes_both_suites(tmp_path: Path) -> None:
    (block,) = [b for b in blocks(PAGE) if b.marker == "file"]
    (tmp_path / block.note).write_text(block.code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", block.note],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", done.stdout).group(1))  # type: ignore[union-attr]
    assert passed >= 29 and "skipped" not in done.stdout, done.stdout[-2000:]
