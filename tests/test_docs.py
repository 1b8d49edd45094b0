"""Docs that hold: every code block of the guide runs, its example files are the ones
tested, and no page links outside the repository or to a file that is not there.
(`make docs-check` builds the pages with `mkdocs build --strict` as well.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doc_blocks import blocks

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GUIDE = DOCS / "guide.md"
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def run_blocks(page: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "EVENTBUS_URL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])  # this checkout
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "doc_blocks.py"), str(page)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def test_every_python_block_of_the_guide_runs() -> None:
    ran = int(re.search(r"(\d+) block\(s\) ran", run_blocks(GUIDE)).group(1))  # type: ignore[union-attr]
    assert ran == sum(1 for b in blocks(GUIDE) if b.marker is None) >= 5


PAGES_WITH_CODE = sorted(page for page in DOCS.rglob("*.md") if blocks(page))


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=lambda p: str(p.relative_to(DOCS)))
def test_every_python_block_of_every_page_runs(page: Path) -> None:
    # Adapter pages included: docs/adapters/writing.md is how a third party starts.
    ran = int(re.search(r"(\d+) block\(s\) ran", run_blocks(page)).group(1))  # type: ignore[union-attr]
    assert ran == sum(1 for b in blocks(page) if b.marker is None)
    assert all(b.note for b in blocks(page) if b.marker is not None)


def test_the_pages_with_code_include_the_adapter_pages() -> None:
    assert {DOCS / "adapters" / "writing.md", DOCS / "adapters" / "redis.md"} <= set(
        PAGES_WITH_CODE
    )


def test_the_readme_example_runs() -> None:
    run_blocks(ROOT / "README.md")


def test_blocks_not_run_say_why_and_stay_few() -> None:
    skipped = [b for b in blocks(GUIDE) if b.marker == "not run"]
    assert all(b.note for b in skipped) and len(skipped) <= 3, skipped


def test_the_guide_files_are_the_tested_example() -> None:
    files = {b.note: b.code for b in blocks(GUIDE) if b.marker == "file"}
    assert set(files) == {"shop.py", "test_shop_service.py"}
    for name, code in files.items():
        assert code == (ROOT / "examples" / "testing" / name).read_text(), (
            f"the guide's {name} differs from examples/testing/{name}; keep them identical"
        )


def markdown_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code is not links
    return LINK.findall(text)


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: str(p.relative_to(DOCS)))
def test_docs_link_only_inside_the_docs(page: Path) -> None:
    for target in markdown_links(page):
        assert not re.match(r"^[a-z][a-z0-9+.-]*:", target), f"{page.name} links out: {target}"
        path = target.split("#", 1)[0]
        if not path:
            continue
        resolved = (page.parent / path).resolve()
        assert resolved.is_relative_to(DOCS), f"{page.name} links outside docs/: {target}"
        assert resolved.exists(), f"{page.name} links to a missing file: {target}"


def test_readme_links_exist() -> None:
    for target in markdown_links(ROOT / "README.md"):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue
        assert (ROOT / target.split("#", 1)[0]).exists(), target


def test_docs_promise_nothing_that_is_not_built() -> None:
    text = "\n".join(p.read_text() for p in DOCS.rglob("*.md"))
    assert (DOCS / "patterns" / "outbox.md").exists()  # the outbox the pages link to
    assert "DESIGN.md" not in text
    assert "e.g. Kafka retry topics" not in text  # Kafka has no native delay


def test_the_readmes_async_test_says_what_runs_it() -> None:
    """The README's test needs pytest-asyncio: the `test` extra brings it, and the
    README shows the setting that runs async tests without a marker."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    names = {re.split(r"[<>=\[ ]", requirement)[0] for requirement in extras["test"]}
    assert {"pytest", "pytest-asyncio"} <= names
    readme = (ROOT / "README.md").read_text()
    assert 'pip install "eventbus[test]"' in readme and 'asyncio_mode = "auto"' in readme
