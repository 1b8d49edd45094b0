"""The outbox page's examples run (and each asserts what it shows)."""

from __future__ import annotations

from tests.test_docs import DOCS, run_blocks


def test_the_outbox_page_runs() -> None:
    assert "3 block(s) ran" in run_blocks(DOCS / "patterns" / "outbox.md")
