"""What the chaos scenarios share: publishing numbered events, a fleet of consumer
processes with one journal, and sampling a process's memory and descriptors."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from uuid import uuid4

from eventbus import EventBus
from integration_tests.chaos.app import on_topic
from integration_tests.chaos.fleet import Consumer, Journal
from integration_tests.chaos.targets import ChaosTarget

CHUNK = 500  # events per publish_many: every one confirmed before the next chunk


def unique(kind: str) -> str:
    return f"chaos-{kind}-{uuid4().hex[:10]}"


async def publish(bus: EventBus, topic: str, seqs: Iterable[int], keys: int = 0) -> set[int]:
    """Publish ``seqs`` (keyed ``k<seq % keys>`` when ``keys``); the confirmed ones."""
    event_cls = on_topic(topic)
    confirmed: set[int] = set()
    batch = list(seqs)
    for start in range(0, len(batch), CHUNK):
        part = batch[start : start + CHUNK]
        if keys:
            # One publish per key keeps a key's events in order on every broker.
            by_key: dict[str, list[int]] = {}
            for seq in part:
                by_key.setdefault(f"k{seq % keys}", []).append(seq)
            for key, seqs_of_key in by_key.items():
                await bus.publish_many([event_cls(seq=s, key=key) for s in seqs_of_key], key=key)
        else:
            await bus.publish_many([event_cls(seq=s) for s in part])
        confirmed.update(part)
    return confirmed


class Fleet:
    """Consumer processes of one (topic, group) writing one journal."""

    def __init__(
        self,
        target: ChaosTarget,
        workdir: Path,
        *,
        topic: str | None = None,
        group: str | None = None,
        **options: str,
    ) -> None:
        url = target.url
        options = {"start": target.start_from, **options}
        self.url = url
        self.topic = topic or unique("topic")
        self.group = group or unique("group")
        self.workdir = workdir
        self.journal = Journal(workdir / "journal")
        self.options = options
        self.consumers: list[Consumer] = []
        self.rng = random.Random(int.from_bytes(os.urandom(4), "big"))

    async def spawn(self, wait_ready: bool = True, **options: str) -> Consumer:
        consumer = Consumer(
            self.url,
            self.topic,
            self.group,
            self.journal.path,
            self.workdir,
            **{**self.options, **options},
        )
        self.consumers.append(consumer)
        await consumer.start(wait_ready)
        return consumer

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.consumers))

    async def handled(
        self, confirmed: set[int], timeout: float = 300.0, progress: float = 120.0
    ) -> dict[int, int]:
        """Wait until every event of ``confirmed`` was handled (failing with the
        consumers' logs); how many times each event's handler ran to its end."""
        try:
            await self.journal.wait_handled(confirmed, timeout=timeout, progress=progress)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from exc
        return self.journal.ends()

    async def more_handled(self, count: int, timeout: float = 300.0) -> None:
        """Wait until ``count`` more events than now ran to their end."""
        floor, start = len(self.journal.ends()), time.monotonic()
        while len(self.journal.ends()) < floor + count:
            assert time.monotonic() - start < timeout, f"stuck\n{self.logs()}"
            await asyncio.sleep(0.02)

    def logs(self) -> str:
        return "\n".join(
            f"--- consumer {i} ---\n{c.log_tail(1500)}" for i, c in enumerate(self.consumers)
        )


@contextlib.asynccontextmanager
async def fleet(target: ChaosTarget, workdir: Path, **options: str) -> AsyncIterator[Fleet]:
    opened = Fleet(target, workdir, **options)
    try:
        yield opened
    finally:
        await opened.close()


def duplicates(ends: dict[int, int], seqs: Iterable[int]) -> int:
    """Runs to the end beyond the first, summed over ``seqs``."""
    return sum(max(0, ends.get(s, 0) - 1) for s in seqs)


def sample(pid: int) -> tuple[float, int]:
    """(resident memory in MiB, open file descriptors) of process ``pid``, from /proc."""
    rss_kib = 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kib = int(line.split()[1])
                break
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


async def until(condition: object, timeout: float, what: str, step: float = 0.05) -> float:
    """Wait until ``condition()`` is true; the seconds it took."""
    start = time.monotonic()
    check = condition  # a callable returning bool
    while not check():  # type: ignore[operator]
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} did not happen within {timeout:.0f}s")
        await asyncio.sleep(step)
    return time.monotonic() - start


class Trickle:
    """Publishes one event every ``every`` seconds in the background until stopped;
    remembers when each publish was confirmed (a failed or timed-out publish is not
    confirmed, and not counted: the scenario promises nothing for it)."""

    def __init__(
        self,
        bus: EventBus,
        topic: str,
        first: int,
        every: float = 0.02,
        publish_timeout: float = 10.0,
    ) -> None:
        self.bus = bus
        self.event_cls = on_topic(topic)
        self.next = first
        self.every = every
        self.publish_timeout = publish_timeout
        self.confirmed: dict[int, float] = {}
        self.failed = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    def confirmed_after(self, moment: float) -> set[int]:
        return {seq for seq, at in self.confirmed.items() if at >= moment}

    async def wait_confirmed_after(self, moment: float, timeout: float = 120.0) -> set[int]:
        """The publishes confirmed after ``moment``, once there is at least one."""
        while not (after := self.confirmed_after(moment)):
            assert time.monotonic() - moment < timeout, "no publish confirmed after the fault"
            await asyncio.sleep(0.1)
        return after

    async def _run(self) -> None:
        while not self._stop.is_set():
            seq, self.next = self.next, self.next + 1
            try:
                await asyncio.wait_for(
                    self.bus.publish(self.event_cls(seq=seq)), self.publish_timeout
                )
            except Exception:  # refused, timed out, connection lost: not confirmed
                self.failed += 1
            else:
                self.confirmed[seq] = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.every)


async def first_end_after(
    journal: Journal, seqs: set[int] | None, moment: float, timeout: float
) -> float:
    """Seconds from ``moment`` to the first handler end after it (of one of ``seqs`` if
    given): how long the consumer took to make progress again."""
    deadline = time.monotonic() + timeout
    while True:
        ends = [
            line.at
            for line in journal.lines()
            if line.mark == "E" and line.at >= moment and (seqs is None or line.seq in seqs)
        ]
        if ends:
            return round(min(ends) - moment, 2)
        assert time.monotonic() < deadline, f"no progress within {timeout:.0f}s of the fault"
        await asyncio.sleep(0.05)
