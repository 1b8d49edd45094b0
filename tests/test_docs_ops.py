"""The observability and integrations pages: every python block runs (as the guide's do)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.doc_blocks import blocks
from tests.test_docs import run_blocks

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.mark.parametrize("page", ["observability.md", "integrations.md"])
def test_every_python_block_of_the_page_runs(page: str) -> None:
    ran = re.search(r"(\d+) block\(s\) ran", run_blocks(DOCS / page))
    assert ran is not None
    assert int(ran.group(1)) == sum(1 for b in blocks(DOCS / page) if b.marker is None) >= 2
