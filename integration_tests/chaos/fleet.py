"""Consumer processes run with ``eventbus run``, and the journal they write.

A :class:`Consumer` is one ``eventbus run integration_tests.chaos.app:bus``
process; :class:`Journal` reads the lines its handlers wrote (see
:mod:`integration_tests.chaos.app`) and answers what a scenario asserts: which
events were handled, how many times, in which order, when.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

READY_MARK = "eventbus running on"
ROOT = str(Path(__file__).resolve().parents[2])
START_TIMEOUT = 90.0


def eventbus_binary() -> str:
    """The ``eventbus`` console script of this interpreter's environment."""
    return str(Path(sys.executable).parent / "eventbus")


class ConsumerStartError(AssertionError):
    """A consumer process exited or never subscribed; the message carries its log tail."""


class Consumer:
    """One ``eventbus run`` process of the chaos app, its stderr kept in ``log_path``."""

    def __init__(
        self, url: str, topic: str, group: str, journal: Path, workdir: Path, **options: str
    ) -> None:
        self.env = {
            **os.environ,
            "EVENTBUS_URL": url,
            "CHAOS_TOPIC": topic,
            "CHAOS_GROUP": group,
            "CHAOS_LOG": str(journal),
            **{f"CHAOS_{name.upper()}": value for name, value in options.items()},
        }
        self.workdir = workdir
        self.process: asyncio.subprocess.Process | None = None
        self.log_path: Path = workdir / "consumer-0.log"
        self.runs = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, wait_ready: bool = True) -> None:
        """Start a new process (a restart after a kill); by default wait until subscribed."""
        self.runs += 1
        self.log_path = self.workdir / f"consumer-{id(self)}-{self.runs}.log"
        with self.log_path.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                eventbus_binary(),
                "run",
                "integration_tests.chaos.app:bus",
                "--log-level",
                "info",
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )
        if wait_ready:
            await self.ready()

    async def ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the process logged that it is subscribed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if READY_MARK in self.log_tail(20000):
                return
            if not self.running:
                break
            await asyncio.sleep(0.05)
        raise ConsumerStartError(
            f"consumer (pid {self.pid}) did not subscribe within {timeout:.0f}s "
            f"(exit {self.process.returncode if self.process else '?'}); its log:\n"
            f"{self.log_tail()}"
        )

    def log_tail(self, size: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-size:]
        return ""

    async def kill(self) -> None:
        """SIGKILL: no handler finishes, nothing is settled or closed."""
        await self._signal(signal.SIGKILL)

    async def terminate(self) -> None:
        """SIGTERM: the graceful stop ``eventbus run`` promises."""
        await self._signal(signal.SIGTERM)

    async def _signal(self, sig: int) -> None:
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    async def wait(self, timeout: float) -> int | None:
        """The exit code, or ``None`` if still running after ``timeout``."""
        assert self.process is not None
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            return None

    async def close(self) -> None:
        """Make sure the process is gone (test teardown)."""
        if self.running:
            await self.kill()
            await self.wait(10.0)


@dataclass(frozen=True, slots=True)
class Line:
    mark: str  # "S": a handler started; "E": it finished
    seq: int
    pid: int
    at: float  # seconds, time.monotonic (the same clock in every process)


class Journal:
    """The lines every consumer process of a scenario appended to one file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[Line]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return []
        out = []
        # The last line may be half-written by a process appending right now.
        for raw in text.split("\n")[:-1]:
            mark, seq, pid, ns = raw.split()
            out.append(Line(mark, int(seq), int(pid), int(ns) / 1e9))
        return out

    def ends(self) -> Counter[int]:
        """How many times each event's handler ran to its end."""
        return Counter(line.seq for line in self.lines() if line.mark == "E")

    def starts(self) -> Counter[int]:
        return Counter(line.seq for line in self.lines() if line.mark == "S")

    async def wait_handled(
        self, expected: set[int], timeout: float, progress: float | None = None
    ) -> float:
        """Wait until every event of ``expected`` ran to its end; returns the time taken.

        ``progress``: fail early when nothing new ended for that many seconds (a stall).
        """
        start = last_change = time.monotonic()
        seen = -1
        while True:
            ends = self.ends()
            missing = expected - ends.keys()
            if not missing:
                return time.monotonic() - start
            now = time.monotonic()
            if len(ends) != seen:
                seen, last_change = len(ends), now
            stalled = progress is not None and now - last_change > progress
            if now - start > timeout or stalled:
                why = f"no progress for {progress:.0f}s" if stalled else f"{timeout:.0f}s"
                raise AssertionError(
                    f"{len(missing)} of {len(expected)} events never handled ({why}); "
                    f"first missing: {sorted(missing)[:10]}"
                )
            await asyncio.sleep(0.1)
