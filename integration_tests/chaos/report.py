"""The figures each chaos scenario measured, one JSON line per (scenario, broker).

``scripts/gen_reliability.py`` turns a profile's file into ``docs/reliability.md``
(the long profile's when there is one, else the short one's) and keeps a copy of it
beside the page.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def reports_dir() -> Path:
    return Path(os.environ.get("EVENTBUS_CHAOS_REPORTS", ROOT / ".reports" / "chaos"))


@dataclass
class Result:
    """What one scenario found on one broker.

    ``lost``: confirmed events never handled (0 where the broker promises it);
    ``duplicates``: handler runs to the end beyond the first, per event, summed;
    ``recovery_s``: seconds from the fault to the consumer making progress again
    (or to the hand-over being done), one figure per fault; ``notes``: what the
    figures need to be read right.
    """

    scenario: str
    broker: str
    events: int
    faults: str = ""
    fault_count: int = 0
    lost: int = 0
    duplicates: int = 0
    recovery_s: list[float] = field(default_factory=list)
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    notes: str = ""


class Report:
    """Appends :class:`Result` lines to ``<reports>/<profile>.jsonl`` (new file per session)."""

    def __init__(self, path: Path, profile: str) -> None:
        self.path = path
        self.profile = profile

    @classmethod
    @contextlib.contextmanager
    def open(cls, profile: str) -> Iterator[Report]:
        directory = reports_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{profile}.jsonl"
        header = {
            "profile": profile,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(),
        }
        path.write_text(json.dumps({"header": header}) + "\n")
        yield cls(path, profile)

    def add(self, result: Result) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps(asdict(result)) + "\n")
