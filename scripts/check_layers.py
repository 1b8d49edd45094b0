"""Check the real import graph of ``eventbus/`` and the adapters against the documented layers.

The rules are read from the docs, so the docs and the code cannot drift apart:

- ``docs/architecture.md``, section "## Layers": a table whose rows are the layers, top
  first, and whose second column names modules as paths under ``eventbus/`` (``bus.py``;
  a folder, ``middleware/``, stands for every module in it; the most specific entry
  wins). A module may import modules of its own layer and of the layers below it.
- ``adapters/README.md``: the bullet list of the core modules an adapter may import
  (``- `eventbus.adapter`: ...``; a module allows its submodules; a line ending in
  ``(redis)`` or ``(kafka, nats)`` allows it to those adapter folders only).

Every ``import`` counts, at module level or inside a function, except under ``if
TYPE_CHECKING:`` (never run), and ``from eventbus import __version__`` (metadata, not the
surface). An import names one module: the packages Python runs before it
(``eventbus/__init__.py`` imports every layer) are not counted.

Prints each violation as ``module -> imported (why)`` and exits 1; a module in no layer,
or a table entry naming no module, is a violation too. ``--root`` checks another tree
(the tests run it on a small fake one).

    python scripts/check_layers.py [--root DIR]
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

CORE = "eventbus"


@dataclass(frozen=True)
class Layer:
    name: str
    rank: int  # 0 is the top layer
    entries: tuple[str, ...]


@dataclass(frozen=True)
class Allowed:
    module: str
    adapters: frozenset[str]  # empty: every adapter


def read_layers(doc: Path) -> list[Layer]:
    """The rows of the table under ``## Layers`` in ``doc``, top first."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    try:
        start = lines.index("## Layers")
    except ValueError:
        raise SystemExit(f"{doc}: no '## Layers' section") from None
    layers: list[Layer] = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if not line.startswith("|"):
            if layers:
                break  # the table ended
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 2 or set(cells[0]) <= {"-", " ", ":"} or cells[0] == "layer":
            continue
        entries = tuple(re.findall(r"`([^`]+)`", cells[1]))
        layers.append(Layer(cells[0], len(layers), entries))
    if not layers:
        raise SystemExit(f"{doc}: no layer table under '## Layers'")
    return layers


def read_adapter_contract(readme: Path) -> list[Allowed]:
    """The core modules ``readme``'s bullet list lets an adapter import."""
    allowed: list[Allowed] = []
    for line in readme.read_text(encoding="utf-8").splitlines():
        match = re.match(r"- ((?:`eventbus[\w.]*`(?:, )?)+)", line)
        if not match:
            continue
        only = re.search(r"\(([a-z]+(?:, [a-z]+)*)\)\s*$", line)
        adapters = frozenset(only.group(1).split(", ")) if only else frozenset()
        allowed += [Allowed(name, adapters) for name in re.findall(r"`([^`]+)`", match.group(1))]
    if not allowed:
        raise SystemExit(f"{readme}: no list of the modules an adapter may import")
    return allowed


def module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The modules ``path`` (module ``name``) imports, ``if TYPE_CHECKING:`` left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node.test):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            for alias in node.names:
                if alias.name.startswith("__") and alias.name.endswith("__"):
                    continue  # the package's metadata (``__version__``), not its surface
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in known else source)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def layer_of(relative: str, layers: list[Layer]) -> Layer | None:
    """The layer whose most specific entry covers ``relative`` (a path under eventbus/)."""
    best: tuple[int, Layer] | None = None
    for layer in layers:
        for entry in layer.entries:
            if (relative == entry or (entry.endswith("/") and relative.startswith(entry))) and (
                best is None or len(entry) > best[0]
            ):
                best = (len(entry), layer)
    return best[1] if best else None


def check(root: Path) -> list[str]:
    """Every violation in the tree at ``root``, one line each."""
    doc = root / "docs" / "architecture.md"
    layers = read_layers(doc)
    core = root / CORE
    files = {module_name(path, root): path for path in sorted(core.rglob("*.py"))}
    known = set(files)
    problems: list[str] = []

    where: dict[str, Layer] = {}
    for name, path in files.items():
        layer = layer_of(path.relative_to(core).as_posix(), layers)
        if layer is None:
            problems.append(f"{name} is in no layer of docs/architecture.md (add it to the table)")
        else:
            where[name] = layer
    relatives = [path.relative_to(core).as_posix() for path in files.values()]
    for layer in layers:
        for entry in layer.entries:
            if not any(
                r == entry or (entry.endswith("/") and r.startswith(entry)) for r in relatives
            ):
                problems.append(
                    f"docs/architecture.md: layer {layer.name!r} lists {entry!r}, "
                    f"which is not a module of {CORE}/"
                )

    for name, path in files.items():
        mine = where.get(name)
        targets = set()
        for target in imports(path, name, known):
            if target != CORE and not target.startswith(CORE + "."):
                continue
            while target not in known and "." in target:
                target = target.rpartition(".")[0]  # a name inside a module: the module
            targets.add(target)
        for target in sorted(targets):
            theirs = where.get(target)
            if mine is None or theirs is None or theirs.rank >= mine.rank:
                continue
            problems.append(
                f"{name} -> {target} (layer {mine.name!r} may not import layer {theirs.name!r})"
            )

    readme = root / "adapters" / "README.md"
    packages = sorted(root.glob(f"adapters/*/{CORE}_*/"))
    if packages:
        allowed = read_adapter_contract(readme)
        for package in packages:
            folder = package.parent.name
            permitted = [a.module for a in allowed if not a.adapters or folder in a.adapters]
            for path in sorted(package.rglob("*.py")):
                name = module_name(path, package.parent)
                for target in sorted(imports(path, name, known)):
                    if target != CORE and not target.startswith(CORE + "."):
                        continue
                    if any(target == m or target.startswith(m + ".") for m in permitted):
                        continue
                    problems.append(
                        f"{name} -> {target} (an adapter may import only the "
                        "contract listed in adapters/README.md)"
                    )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=Path(__file__).resolve().parent.parent,
        help="the repository to check (default: this one)",
    )
    args = parser.parse_args(argv)
    problems = check(args.root)
    for problem in problems:
        print(problem)
    if problems:
        print(
            f"{len(problems)} layer violation(s): fix the import, or the table in "
            "docs/architecture.md (or the list in adapters/README.md) where it is wrong",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
