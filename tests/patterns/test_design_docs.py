"""The event design page's examples run (and each asserts what it shows)."""

from __future__ import annotations

from tests.test_docs import DOCS, run_blocks


def test_the_event_design_page_runs() -> None:
    assert "3 block(s) ran" in run_blocks(DOCS / "patterns" / "event-design.md")
