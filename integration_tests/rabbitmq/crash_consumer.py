"""A consumer process whose handler kills it (``os._exit``), for the crash-loop test.

Run as ``python -m integration_tests.rabbitmq.crash_consumer URL TOPIC GROUP LOG``:
each run of the handler appends ``ctx.attempt`` to LOG and ends the process at once;
when nothing arrives within a few seconds (the message was dead-lettered) it exits 0.
"""

from __future__ import annotations

import asyncio
import os
import sys

from eventbus import Context, Event, EventBus, RetryPolicy

MAX_ATTEMPTS = 3


async def main(url: str, topic: str, group: str, log_path: str) -> None:
    class Boom(Event, type="tests.rabbitmq.crash.boom", topic=topic):
        n: int

    bus = EventBus.from_url(
        url, source="crash-tests", warn_after=None, retry=RetryPolicy(max_attempts=MAX_ATTEMPTS)
    )

    @bus.subscribe(Boom, group=group)
    async def handle(event: Boom, ctx: Context) -> None:
        # A plain os.write: the process ends on the next line, nothing may stay buffered.
        fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{ctx.attempt}\n".encode())
        os.close(fd)
        os._exit(1)  # the process dies in the handler: nothing is settled

    async with bus:
        await asyncio.sleep(4)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
