"""Extract the fenced ``python`` blocks of a Markdown file and run them in order.

``python tests/doc_blocks.py docs/guide.md`` runs every block as one script (one
namespace, top-level ``await`` allowed, one event loop), each compiled with its
line in the Markdown file so a traceback points at the page. A block preceded by
``<!-- not run: reason -->`` is skipped; one preceded by ``<!-- file: NAME -->``
is a whole file (checked against ``examples/testing/NAME`` by tests/test_docs.py).
"""

from __future__ import annotations

import ast
import asyncio
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
MARKER = re.compile(r"<!--\s*(not run|file):\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # of the first line of code, 1-based
    code: str
    marker: str | None = None  # "not run" or "file"
    note: str = ""


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marked = MARKER.search(before)
        line = text.count("\n", 0, match.start(1)) + 1
        found.append(Block(line, match.group(1), *(marked.groups() if marked else (None, ""))))
    return found


async def run(path: Path) -> int:
    module = types.ModuleType(f"docs_{path.stem}")
    sys.modules[module.__name__] = module  # pydantic resolves annotations through it
    namespace = module.__dict__
    count = 0
    for block in blocks(path):
        if block.marker is not None:
            continue
        source = "\n" * (block.line - 1) + block.code
        code = compile(source, str(path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        result = eval(code, namespace)
        if asyncio.iscoroutine(result):
            await result
        count += 1
    main = namespace.get("main")
    if callable(main) and asyncio.iscoroutinefunction(main):
        await main()  # a page that defines main() shows it being run
    return count


if __name__ == "__main__":
    target = Path(sys.argv[1])
    ran = asyncio.run(run(target))
    print(f"{target}: {ran} block(s) ran")
