"""Private nats-server processes for cases that need server-wide settings (a small
``max_payload``) or that crash and restart the server; never the shared one."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from integration_tests.harness import processes


@contextlib.contextmanager
def private_server(*, max_payload: int | None = None) -> Iterator[processes.LocalProcess]:
    """A nats-server of our own on a free port (JetStream on its own store directory),
    stopped and removed at the end; ``proc.url`` is ``nats://127.0.0.1:<port>``."""
    binary = processes._require_binary("nats-server", "nats-server", "/usr/sbin/nats-server")
    port = processes.free_port()
    workdir = Path(tempfile.mkdtemp(prefix="eventbus-nats-private-"))
    lines = [f"listen: 127.0.0.1:{port}"]
    if max_payload is not None:
        lines.append(f"max_payload: {max_payload}")
    lines.append(f"jetstream {{ store_dir: {workdir / 'js'!s} }}")
    (workdir / "nats.conf").write_text("\n".join(lines) + "\n")
    proc = processes.LocalProcess(
        "nats",
        [binary, "-c", str(workdir / "nats.conf")],
        f"nats://127.0.0.1:{port}",
        workdir=workdir,
    )
    proc.start()
    try:
        yield proc
    finally:
        proc.close()


def crash(proc: processes.LocalProcess) -> None:
    """Kill the server at once (SIGKILL: no shutdown notice to its clients)."""
    running = proc._proc
    if running is not None:
        running.kill()
        running.wait(10)
    proc._proc = None
