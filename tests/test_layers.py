"""The layer check of ``make lint`` (``scripts/check_layers.py``): it reads the layers from
docs/architecture.md and the adapter contract from adapters/README.md, and fails on an
import that crosses them; shown here on a tiny tree made for each case."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_layers.py"

ARCHITECTURE = """# Architecture

## Layers

Top first.

| layer | modules | what it does |
|---|---|---|
| surface | `__init__.py`, `tools/` | what users import |
| bus | `bus.py` | the bus |
| base | `errors.py`, `adapter.py` | the bottom |

## Next section

| not | a | layer |
|---|---|---|
| x | `nothing.py` | y |
"""

README = """# Adapters

- `eventbus.adapter`: the contract
- `eventbus.errors`: errors
- `eventbus.bus`: only for the odd one (odd)
"""


def tree(root: Path, files: dict[str, str]) -> Path:
    (root / "docs").mkdir()
    (root / "docs" / "architecture.md").write_text(ARCHITECTURE)
    base = {
        "eventbus/__init__.py": "from eventbus.bus import Bus\n",
        "eventbus/bus.py": "from eventbus.errors import Error\nclass Bus: ...\n",
        "eventbus/errors.py": "class Error(Exception): ...\n",
        "eventbus/adapter.py": "from eventbus import errors\n",
        "eventbus/tools/__init__.py": "from eventbus import bus\n",
    }
    for name, text in {**base, **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def run(root: Path) -> tuple[int, list[str]]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout.splitlines()


def test_a_tree_that_keeps_to_its_layers_passes(tmp_path: Path) -> None:
    assert run(tree(tmp_path, {})) == (0, [])


def test_an_import_of_a_layer_above_fails_and_names_both_ends(tmp_path: Path) -> None:
    code, lines = run(tree(tmp_path, {"eventbus/errors.py": "import eventbus.bus\n"}))
    assert (code, lines) == (
        1,
        ["eventbus.errors -> eventbus.bus (layer 'base' may not import layer 'bus')"],
    )


def test_an_import_inside_a_function_counts_and_type_checking_or_version_ones_do_not(
    tmp_path: Path,
) -> None:
    errors = (
        "from typing import TYPE_CHECKING\n"
        "from eventbus import __version__\n"  # metadata, not the surface
        "if TYPE_CHECKING:\n    from eventbus.bus import Bus\n"
        "def late():\n    from eventbus.tools import thing\n"
    )
    code, lines = run(tree(tmp_path, {"eventbus/errors.py": errors}))
    assert (code, lines) == (
        1,
        ["eventbus.errors -> eventbus.tools (layer 'base' may not import layer 'surface')"],
    )


def test_a_relative_import_is_resolved(tmp_path: Path) -> None:
    code, lines = run(tree(tmp_path, {"eventbus/adapter.py": "from .bus import Bus\n"}))
    assert (code, lines) == (
        1,
        ["eventbus.adapter -> eventbus.bus (layer 'base' may not import layer 'bus')"],
    )


def test_a_module_the_table_does_not_place_and_an_entry_naming_nothing_fail(tmp_path: Path) -> None:
    root = tree(tmp_path, {"eventbus/extra.py": ""})
    doc = root / "docs" / "architecture.md"
    doc.write_text(doc.read_text().replace("`bus.py` |", "`bus.py`, `gone.py` |"))
    code, lines = run(root)
    assert code == 1
    assert lines == [
        "eventbus.extra is in no layer of docs/architecture.md (add it to the table)",
        "docs/architecture.md: layer 'bus' lists 'gone.py', which is not a module of eventbus/",
    ]


def test_an_adapter_may_import_only_the_contract_its_readme_lists(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "adapters/README.md": README,
            "adapters/good/eventbus_good/__init__.py": (
                "from eventbus.adapter import x\nfrom eventbus.errors import Error\n"
                "from . import codec\nimport json\n"
            ),
            "adapters/good/eventbus_good/codec.py": "from eventbus import bus\n",
            "adapters/odd/eventbus_odd/__init__.py": "from eventbus.bus import Bus\n",
        },
    )
    code, lines = run(root)
    assert (code, lines) == (
        1,
        [
            "eventbus_good.codec -> eventbus.bus (an adapter may import "
            "only the contract listed in adapters/README.md)"
        ],
    )


def test_this_repository_keeps_to_its_documented_layers() -> None:
    assert run(SCRIPT.parent.parent) == (0, [])
