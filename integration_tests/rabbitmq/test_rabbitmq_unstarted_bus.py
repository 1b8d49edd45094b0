"""A script that publishes on a bus it never started exits cleanly on RabbitMQ: the
connection the publish opened is closed when the event loop ends (it used to leave
"Task was destroyed but it is pending!" and "Event loop is closed" at exit)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

SCRIPT = """
    import asyncio, sys
    from eventbus import Event, EventBus

    class Pinged(Event, type="it.unstarted.pinged", topic=sys.argv[2]):
        n: int

    async def main() -> None:
        bus = EventBus(sys.argv[1])
        print("published", (await bus.publish(Pinged(n=1))).id, flush=True)

    asyncio.run(main())
"""


def test_publishing_on_a_bus_never_started_leaves_nothing_pending_at_exit(
    rabbitmq_url: str,
) -> None:
    separator = "&" if "?" in rabbitmq_url else "?"
    url = f"{rabbitmq_url}{separator}mandatory=false"  # no group: nothing to route to
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), url, f"unstarted-{uuid.uuid4().hex}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("published ")
    assert "Task was destroyed" not in done.stderr, done.stderr[-3000:]
    assert "Event loop is closed" not in done.stderr, done.stderr[-3000:]
