"""Run the test suite's shards at once, each a pytest process under coverage.

``make test``'s test step. Most of the suite waits (on brokers, timers, redeliveries):
run as one process it took ~55 minutes here with the 2-core machine mostly idle.
The shards (the root ``conftest.py`` says which test is in which, and why they do not
disturb each other) run side by side, so the suite takes about as long as its
longest shard.

::

    python scripts/test_shards.py                 # every shard; exit 0 when all passed
    python scripts/test_shards.py -- -x -k sqs    # extra pytest arguments for every shard

Each shard writes ``.reports/shard-<name>.log`` (its pytest output, printed here when
it ends) and ``.reports/junit-<name>.xml``; the JUnit reports are merged into
``.reports/junit.xml`` (what ``scripts/gen_docs.py`` reads) and the coverage data
files are left for ``coverage combine``. A shard that fails, or collects nothing,
fails the run.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / ".reports"


def shard_names() -> tuple[str, ...]:
    """The shards the root ``conftest.py`` defines (loaded by its path: under pytest the
    name ``conftest`` may be another folder's)."""
    spec = importlib.util.spec_from_file_location("eventbus_test_shards", ROOT / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(module.SHARDS)


@dataclass
class Shard:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    junit: Path
    started: float
    ended: float | None = None

    @property
    def took(self) -> str:
        seconds = int((self.ended or time.monotonic()) - self.started)
        return f"{seconds // 60}m{seconds % 60:02d}s"


def start(name: str, extra: list[str]) -> Shard:
    log = REPORTS / f"shard-{name}.log"
    junit = REPORTS / f"junit-{name}.xml"
    junit.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "coverage",
        "run",
        "--parallel-mode",
        "--source=eventbus",
        "-m",
        "pytest",
        "-q",
        "-ra",
        "-p",
        "no:cacheprovider",  # two sessions would write one cache
        f"--junitxml={junit}",
        f"--shard={name}",
        *extra,
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    print(f"[shards] {name}: started (pid {process.pid}), output in {log.relative_to(ROOT)}")
    return Shard(name, process, log, junit, time.monotonic())


def merge_junit(shards: list[Shard]) -> None:
    """One JUnit report of every shard's test cases, as one pytest run writes it."""
    merged = ET.Element("testsuites")
    suite = ET.SubElement(merged, "testsuite", name="pytest")
    totals = dict.fromkeys(("errors", "failures", "skipped", "tests"), 0)
    took = 0.0
    started: list[str] = []
    for shard in shards:
        if not shard.junit.exists():
            continue
        for found in ET.parse(shard.junit).getroot().iter("testsuite"):
            for key in totals:
                totals[key] += int(found.get(key, "0"))
            took = max(took, float(found.get("time", "0")))
            started += [found.get("timestamp", "")] if found.get("timestamp") else []
            suite.extend(list(found))
    for key, value in totals.items():
        suite.set(key, str(value))
    suite.set("time", f"{took:.3f}")
    if started:  # the run's start (gen_docs.py dates the matrix by it)
        suite.set("timestamp", min(started))
    ET.ElementTree(merged).write(REPORTS / "junit.xml", encoding="utf-8", xml_declaration=True)


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    REPORTS.mkdir(exist_ok=True)
    for stale in [ROOT / ".coverage", *ROOT.glob(".coverage.*")]:  # data, combined after
        stale.unlink(missing_ok=True)
    shards = [start(name, extra) for name in shard_names()]

    def stop_all(signum: int, _frame: object) -> None:
        for shard in shards:
            if shard.process.poll() is None:
                os.killpg(shard.process.pid, signum)

    signal.signal(signal.SIGINT, stop_all)
    signal.signal(signal.SIGTERM, stop_all)
    running = list(shards)
    while running:
        time.sleep(1.0)
        for shard in list(running):
            if shard.process.poll() is not None:
                shard.ended = time.monotonic()
                running.remove(shard)
                print(
                    f"[shards] {shard.name}: exit {shard.process.returncode} after {shard.took}",
                    flush=True,
                )
    failed = []
    for shard in shards:
        print(f"\n{'=' * 30} shard {shard.name} ({shard.took}) {'=' * 30}", flush=True)
        sys.stdout.write(shard.log.read_text(errors="replace"))
        if shard.process.returncode != 0:  # 5: it collected nothing, a failure too
            failed.append(f"{shard.name} (exit {shard.process.returncode})")
    merge_junit(shards)
    summary = ", ".join(f"{shard.name} {shard.took}" for shard in shards)
    if failed:
        print(f"\n[shards] FAILED: {', '.join(failed)}; {summary}", flush=True)
        return 1
    print(f"\n[shards] every shard passed: {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
