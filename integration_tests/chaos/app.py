"""The service the chaos scenarios run with ``eventbus run integration_tests.chaos.app:bus``.

Configured by environment variables (a real service would be configured the same
way, and ``eventbus run`` takes nothing else):

- ``EVENTBUS_URL``: the broker; ``CHAOS_TOPIC``, ``CHAOS_GROUP``: what it consumes;
- ``CHAOS_LOG``: the journal file: one line per handler start (``S``) and end
  (``E``): ``<mark> <seq> <pid> <monotonic ns>``, written with one ``os.write`` on
  an ``O_APPEND`` file, so a SIGKILL never tears a line and never loses one the
  handler wrote (the kernel holds it, not the process);
- ``CHAOS_DELAY``: seconds each handler sleeps (default 0: as fast as it goes);
- ``CHAOS_CONCURRENCY``: handlers in parallel (default 1);
- ``CHAOS_IDEMPOTENCY``: a Redis URL: the idempotency middleware on a shared
  ``RedisIdempotencyStore`` (lease ``CHAOS_LEASE`` seconds, default 5);
- ``CHAOS_SHUTDOWN``: the bus's ``shutdown_timeout`` (default 10);
- ``CHAOS_EXPECT``: soak mode for that many events (seq 0..N-1): no journal line per
  event (a million of them would be the test); the handler marks each seq in a bitmap
  and rewrites ``CHAOS_LOG`` with ``<distinct> <runs>`` every 1,000 runs and at the end;
- ``CHAOS_START``: the group's ``start_from`` (default ``earliest``; SQS keeps no
  history, so there the consumer subscribes first with ``latest``).

An event's ``kind`` says what its handler does: ``ok`` handles it, ``fail`` raises
every time (dead-lettered after the retry policy's attempts), ``kill`` ends the
process at once with ``os._exit`` (dead-lettered by the crash-loop budget once it
has killed ``MAX_ATTEMPTS`` processes).
"""

from __future__ import annotations

import asyncio
import os
import time
import types
from typing import Literal, cast

from eventbus import Context, Event, EventBus, RetryPolicy

MAX_ATTEMPTS = 3
KILL_EXIT = 17


class ChaosEvent(Event, type="tests.chaos.event"):
    """One event of a scenario: its sequence number, its ordering key, what to do."""

    seq: int
    key: str = ""
    kind: str = "ok"


def on_topic(topic: str) -> type[ChaosEvent]:
    """:class:`ChaosEvent` whose default topic is ``topic`` (each scenario has its own)."""
    keywords = {"topic": topic, "type": ChaosEvent.event_type(), "register": False}
    return cast("type[ChaosEvent]", types.new_class("ChaosEvent", (ChaosEvent,), keywords))


def journal(path: str, mark: str, seq: int) -> None:
    """Append one line to the journal (see the module docstring for why os.write)."""
    line = f"{mark} {seq} {os.getpid()} {time.monotonic_ns()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def make_bus() -> EventBus:
    """The bus ``eventbus run`` serves, built from the environment."""
    env = os.environ
    topic, group, log = env["CHAOS_TOPIC"], env["CHAOS_GROUP"], env["CHAOS_LOG"]
    delay = float(env.get("CHAOS_DELAY", "0"))
    options: dict[str, object] = {}
    if env.get("CHAOS_IDEMPOTENCY"):
        from eventbus_redis import RedisIdempotencyStore

        from eventbus.middleware.idempotency import Idempotency

        store = RedisIdempotencyStore(env["CHAOS_IDEMPOTENCY"], prefix=f"chaos:{group}:")
        # A short lease: a claim left by a killed process blocks its event only this long.
        options["idempotency"] = Idempotency(store, lease=float(env.get("CHAOS_LEASE", "5")))
    # in_process_attempts=1: every retry goes back through the broker, as after a crash.
    retry = RetryPolicy(
        max_attempts=MAX_ATTEMPTS, in_process_attempts=1, initial_delay=0.05, jitter=0.0
    )
    bus = EventBus.from_env(
        source="chaos",
        retry=retry,
        warn_after=None,
        shutdown_timeout=float(env.get("CHAOS_SHUTDOWN", "10")),
        **options,
    )

    start = cast("Literal['earliest', 'latest']", env.get("CHAOS_START", "earliest"))

    expect = int(env.get("CHAOS_EXPECT", "0"))
    if expect:
        return _soak(bus, topic, group, start, log, expect)

    concurrency = int(env.get("CHAOS_CONCURRENCY", "1"))

    @bus.subscribe(on_topic(topic), group=group, start_from=start, concurrency=concurrency)
    async def handle(event: ChaosEvent, ctx: Context) -> None:
        journal(log, "S", event.seq)
        if event.kind == "kill":
            os._exit(KILL_EXIT)  # as an out-of-memory kill would: nothing settled
        if event.kind == "fail":
            raise RuntimeError(f"chaos: event {event.seq} fails every time")
        if delay:
            await asyncio.sleep(delay)
        journal(log, "E", event.seq)

    return bus


def _soak(bus: EventBus, topic: str, group: str, start: str, log: str, expect: int) -> EventBus:
    seen = bytearray(expect)
    counts = [0, 0]  # distinct, runs

    def progress() -> None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            line = f"{counts[0]} {counts[1]}\n".ljust(32)
            os.pwrite(fd, line.encode(), 0)
        finally:
            os.close(fd)

    @bus.subscribe(
        on_topic(topic), group=group, start_from=cast("Literal['earliest', 'latest']", start)
    )
    async def handle(event: ChaosEvent) -> None:
        counts[1] += 1
        if not seen[event.seq]:
            seen[event.seq] = 1
            counts[0] += 1
        if counts[1] % 1000 == 0 or counts[0] == expect:
            progress()

    return bus


bus = make_bus
