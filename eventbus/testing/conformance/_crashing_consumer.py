"""A consumer whose handler kills its own process: the crash-loop conformance case runs it.

``python -m eventbus.testing.conformance._crashing_consumer URL TOPIC GROUP RUNS MAX START
[ADAPTER]`` subscribes ``GROUP`` to ``TOPIC`` on the broker at ``URL`` (``START``:
``earliest`` or ``latest``; ``ADAPTER``: ``module:name`` of the target's adapter factory,
else the URL's registered scheme is used), prints ``ready`` once subscribed, and for every
message appends the event id to the file ``RUNS`` and ends the process at once with
``os._exit`` (no ack, no cleanup: as an out-of-memory kill or a segfault would). A message
that reaches it after ``MAX`` such runs is dead-lettered by the bus instead of running
again; the process then sits idle until the case kills it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import cast

from eventbus.adapter import StartFrom
from eventbus.bus import EventBus
from eventbus.envelope import Envelope
from eventbus.middleware.retry import RetryPolicy
from eventbus.testing.target import import_adapter

CRASH_EXIT = 17
"""The exit code of a run that crashed on purpose."""


async def _consume(
    url: str,
    topic: str,
    group: str,
    runs: str,
    max_attempts: int,
    start_from: str,
    adapter: str = "",
) -> None:
    policy = RetryPolicy(
        max_attempts=max_attempts, in_process_attempts=1, initial_delay=0.01, jitter=0.0
    )
    bus = EventBus(
        import_adapter(adapter)(url) if adapter else url,
        source="eventbus.conformance.crasher",
        retry=policy,
        shutdown_timeout=1.0,
    )

    @bus.subscribe(topic, group=group, start_from=cast(StartFrom, start_from))
    async def crash(envelope: Envelope) -> None:
        # Recorded durably before the crash (a few bytes: no thread needed).
        fd = os.open(runs, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, (envelope.id + "\n").encode())
        os.fsync(fd)
        os._exit(CRASH_EXIT)

    await bus.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str]) -> None:
    url, topic, group, runs, max_attempts, start_from, *adapter = argv
    asyncio.run(_consume(url, topic, group, runs, int(max_attempts), start_from, *adapter))


if __name__ == "__main__":
    main(sys.argv[1:])
