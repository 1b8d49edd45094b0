"""Mutation check: deliberate bugs in the core that the conformance suite must catch.

Each mutant is applied by monkeypatching in a fresh ``pytest`` process that runs
only the conformance cases (on the memory broker) meant to catch it; the mutant
is *killed* when at least one of them fails. Any survivor fails this script, and
so ``make test``: a suite that cannot tell these bugs from the real thing proves
nothing about them.

Usage::

    python scripts/mutants.py            # every mutant, prints a table
    python scripts/mutants.py NAME ...   # only these
    python scripts/mutants.py --apply NAME -- PYTEST-ARGS   # (internal) one run
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUITE = "tests/test_conformance_memory.py::TestMemoryConformance"
# Waits are scaled down: a killed mutant usually shows as a case waiting in vain.
PATIENCE = "0.3"


def _runner_module() -> ModuleType:
    """The module holding ``Runner`` (``eventbus.runner``, formerly ``eventbus.subscription``)."""
    for name in ("eventbus.runner", "eventbus.subscription"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "Runner"):
            return module
    raise SystemExit("mutants: found no Runner in eventbus.runner or eventbus.subscription")


# -- the mutants ---------------------------------------------------------------------------


def skip_lane_routing() -> None:
    """Route every delivery as if it had no partition key (least-loaded lane)."""
    from eventbus.lanes import Lanes  # the runner's lanes part routes deliveries

    original = Lanes.route

    def route(self: Any, delivery: Any) -> None:
        envelope = delivery.envelope
        if envelope is None or envelope.partitionkey is None:
            original(self, delivery)
            return
        delivery.envelope = envelope.evolve(partitionkey=None)
        try:
            original(self, delivery)
        finally:
            delivery.envelope = envelope

    Lanes.route = route  # type: ignore[method-assign]


def ack_before_handling() -> None:
    """Acknowledge each delivery before its handler runs."""
    runner = _runner_module().Runner
    original = runner.handle

    async def handle(self: Any, delivery: Any) -> None:
        if delivery.envelope is not None:
            await delivery.ack()
        await original(self, delivery)

    runner.handle = handle


def dead_letter_duplicates() -> None:
    """A duplicate of an event already handled raises instead of being skipped (in the
    step both of idempotency's paths share: the composed ``__call__`` and the plain
    calls the runner makes over the memory store)."""
    from eventbus.middleware.idempotency import Claim, Idempotency

    original = Idempotency._owner

    def _owner(self: Any, ctx: Any, claim: Any) -> Any:
        if claim.status is Claim.DONE:
            raise RuntimeError("mutant: a duplicate of a handled event is an error")
        return original(self, ctx, claim)

    Idempotency._owner = _owner  # type: ignore[method-assign]


def drop_release_on_failure() -> None:
    """The idempotency stores' ``release`` does nothing: a failed claim stays held."""
    from eventbus.middleware import idempotency, sqlite_store

    async def release(self: Any, *args: Any, **kwargs: Any) -> Any:
        return False  # "did not hold the claim": nothing released

    def release_now(self: Any, *args: Any, **kwargs: Any) -> Any:
        return False  # the memory store's plain-call twin, which the middleware calls

    idempotency.MemoryIdempotencyStore.release = release  # type: ignore[method-assign]
    idempotency.MemoryIdempotencyStore.release_now = release_now  # type: ignore[method-assign]
    sqlite_store.SQLiteIdempotencyStore.release = release  # type: ignore[method-assign]


def codec_loses_subject() -> None:
    """Binary-mode encoding forgets the ``subject`` attribute (a codec bug that only a
    broker that really encodes, memory included, can show)."""
    from eventbus import codec

    original = codec.encode_binary

    def encode_binary(envelope: Any, *args: Any, **kwargs: Any) -> Any:
        headers, body = original(envelope, *args, **kwargs)
        return {k: v for k, v in headers.items() if not k.endswith("subject")}, body

    codec.encode_binary = encode_binary


@dataclass(frozen=True)
class Mutant:
    name: str
    apply: Callable[[], None]
    cases: tuple[str, ...]

    @property
    def node_ids(self) -> list[str]:
        return [f"{SUITE}::{case}" for case in self.cases]


MUTANTS = {
    m.name: m
    for m in (
        Mutant(
            "skip lane routing",
            skip_lane_routing,
            (
                "test_in_order_per_key[memory-log]",
                "test_in_order_per_key_under_retries[memory-log]",
                "test_unfinished_key_holds_later_same_key[memory-log]",
            ),
        ),
        Mutant(
            "ack before handling",
            ack_before_handling,
            (
                "test_shutdown_timeout_returns_unfinished[memory]",
                "test_continue_after_errors[memory]",
                "test_delayed_redelivery_honoured[memory]",
            ),
        ),
        Mutant(
            "dead-letter duplicates",
            dead_letter_duplicates,
            (
                "test_idempotent_duplicate_ids[memory]",
                "test_idempotent_concurrent_duplicates[memory]",
            ),
        ),
        Mutant(
            "drop release on failure",
            drop_release_on_failure,
            ("test_idempotent_release_on_failure[memory]",),
        ),
        Mutant(
            "codec loses subject",
            codec_loses_subject,
            (
                "test_cloudevents_attributes_round_trip[memory]",
                "test_publish_subscribe_metadata_intact[memory]",
            ),
        ),
    )
}


# A control that changes nothing: it must be reported as surviving (tests use it to
# prove that a survivor fails this script); never run by default.
CONTROLS = {m.name: m for m in (Mutant("no change", lambda: None, ("test_health_ok[memory]",)),)}


# -- running -------------------------------------------------------------------------------


@dataclass
class Result:
    mutant: Mutant
    killed_by: list[str]
    code: int
    seconds: float
    output: str


def run_one(mutant: Mutant) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        command = [
            sys.executable,
            __file__,
            "--apply",
            mutant.name,
            "--",
            "-q",
            "-p",
            "no:cacheprovider",
            "-x",
            f"--junitxml={report}",
            *mutant.node_ids,
        ]
        env = {**os.environ, "EVENTBUS_CONFORMANCE_PATIENCE": PATIENCE}
        started = time.monotonic()
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, check=False
        )
        seconds = time.monotonic() - started
        killed_by = _failed_cases(report) if report.exists() else []
    return Result(mutant, killed_by, done.returncode, seconds, done.stdout + done.stderr)


def _failed_cases(report: Path) -> list[str]:
    failed = []
    for testcase in ET.parse(report).iter("testcase"):
        if testcase.find("failure") is not None or testcase.find("error") is not None:
            failed.append(testcase.get("name", "?"))
    return failed


def main(argv: list[str]) -> int:
    if argv[:1] == ["--apply"]:
        import pytest

        class ApplyMutant:
            """Patches once pytest has loaded its plugins (eventbus's among them)."""

            @staticmethod
            def pytest_configure(config: pytest.Config) -> None:
                {**MUTANTS, **CONTROLS}[argv[1]].apply()

        return int(pytest.main(argv[3:], plugins=[ApplyMutant()]))
    known = {**MUTANTS, **CONTROLS}
    names = argv or list(MUTANTS)
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"unknown mutant(s) {unknown}; known: {list(known)}", file=sys.stderr)
        return 2
    results = [run_one(known[name]) for name in names]
    width = max(len(r.mutant.name) for r in results)
    print(f"{'mutant':<{width}}  result    time  killed by")
    survivors = []
    for r in results:
        # pytest exits 1 when a test failed; anything else (0 = all passed, 2-5 =
        # interrupted, usage error, nothing collected) means the mutant was not killed.
        killed = r.code == 1 and bool(r.killed_by)
        if not killed:
            survivors.append(r)
        verdict = "killed" if killed else "SURVIVED" if r.code == 0 else f"ERROR({r.code})"
        print(
            f"{r.mutant.name:<{width}}  {verdict:<8} {r.seconds:4.1f}s  "
            f"{', '.join(r.killed_by) or '-'}"
        )
    for r in survivors:
        print(f"\n--- {r.mutant.name}: pytest output ---\n{r.output[-3000:]}", file=sys.stderr)
    if survivors:
        print(
            f"\n{len(survivors)} mutant(s) not killed: the conformance suite cannot tell "
            "them from the real code; strengthen the cases listed for them.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
