"""The sagas page's code blocks run (as tests/test_docs.py runs the guide's)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.doc_blocks import blocks
from tests.test_docs import run_blocks

PAGE = Path(__file__).resolve().parents[2] / "docs" / "patterns" / "sagas.md"


def test_every_block_of_the_sagas_page_runs() -> None:
    ran = int(re.search(r"(\d+) block\(s\) ran", run_blocks(PAGE)).group(1))  # type: ignore[union-attr]
    assert ran == len(blocks(PAGE)) >= 5
