"""Every python block of docs/patterns/cqrs.md runs (as tests/test_docs.py runs the
guide's)."""

from __future__ import annotations

import re

from tests.doc_blocks import blocks
from tests.test_docs import DOCS, run_blocks

PAGE = DOCS / "patterns" / "cqrs.md"


def test_every_python_block_of_the_cqrs_page_runs() -> None:
    ran = int(re.search(r"(\d+) block\(s\) ran", run_blocks(PAGE)).group(1))  # type: ignore[union-attr]
    assert ran == len(blocks(PAGE)) >= 6
