"""The migrations page's example runs (and asserts what it shows)."""

from __future__ import annotations

from tests.test_docs import DOCS, run_blocks


def test_the_migrations_page_runs() -> None:
    assert "1 block(s) ran" in run_blocks(DOCS / "patterns" / "migrations.md")
