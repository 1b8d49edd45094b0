"""The order saga as three service processes on one SQLite file (``make demo`` runs it).

::

    python -m examples.order_saga.processes             # a fresh temporary database
    python -m examples.order_saga.processes --url sqlite:///saga.db

Starts ``eventbus run examples.order_saga.<service>:create_bus`` for the order,
payment and inventory services, each its own process on ``$EVENTBUS_URL``; waits
until each has joined its groups (their rows in the file); places the two orders
of the demo from this process and watches every topic (``demo.py --external``);
then stops the services with SIGTERM (graceful shutdown) and exits 0 when both
sagas ended as expected and every service stopped cleanly, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

if not __package__:  # run as a file: make the `examples` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from eventbus.patterns.sql import Database
from examples.order_saga import demo, inventory_service, order_service, payment_service

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {
    "order-service": order_service,
    "payment-service": payment_service,
    "inventory-service": inventory_service,
}


def groups_of(url: str) -> set[tuple[str, str]]:
    """The (topic, group) pairs the three services subscribe to (built, not started)."""
    os.environ["EVENTBUS_URL"] = url
    return {
        (spec.topic, spec.group)
        for module in SERVICES.values()
        for spec in module.create_bus().subscriptions
    }


async def wait_joined(url: str, expected: set[tuple[str, str]], timeout: float) -> None:
    """Until every (topic, group) has its row in the broker's tables."""
    deadline = time.monotonic() + timeout
    while True:
        joined: set[tuple[str, str]] = set()
        try:
            async with await Database.connect(url.partition("?")[0]) as db, db.transaction() as tx:
                rows = await tx.fetch("SELECT topic, name FROM eventbus_groups")
                joined = {(str(topic), str(name)) for topic, name in rows}
        except Exception:  # the tables are not there yet
            pass
        if expected <= joined:
            return
        if time.monotonic() > deadline:
            raise demo.SagaTimeout(
                f"the services did not subscribe within {timeout:g}s; "
                f"missing: {sorted(expected - joined)}"
            )
        await asyncio.sleep(0.1)


def start(url: str, logs: Path) -> dict[str, subprocess.Popen[bytes]]:
    """Each service's log goes to ``logs/<service>.log`` (shown if something fails)."""
    env = {
        **os.environ,
        "EVENTBUS_URL": url,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    processes = {}
    for name, module in SERVICES.items():
        with open(logs / f"{name}.log", "wb") as log:
            processes[name] = subprocess.Popen(
                [sys.executable, "-m", "eventbus", "run", f"{module.__name__}:create_bus"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    return processes


def show_logs(logs: Path) -> None:
    for name in SERVICES:
        lines = (logs / f"{name}.log").read_text(errors="replace").splitlines()
        print(f"--- {name} (last lines) ---", *lines[-15:], sep="\n", file=sys.stderr)


def stop(processes: dict[str, subprocess.Popen[bytes]]) -> list[str]:
    """SIGTERM each service; what did not stop cleanly within 20 s."""
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    problems = []
    for name, process in processes.items():
        try:
            code = process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
            problems.append(f"{name} did not stop within 20 s after SIGTERM (killed)")
            continue
        if code != 0:
            problems.append(f"{name} exited with {code}")
    return problems


def run(url: str, timeout: float) -> int:
    print(f"three service processes (eventbus run) on {url}", flush=True)
    expected = groups_of(url)
    with tempfile.TemporaryDirectory(prefix="order-saga-logs-") as scratch:
        logs = Path(scratch)
        processes = start(url, logs)
        try:
            asyncio.run(wait_joined(url, expected, 60.0))
            print("services subscribed; placing the orders from this process\n", flush=True)
            saga = asyncio.run(demo.run_saga(url, with_services=False, timeout=timeout))
        except demo.SagaTimeout as exc:
            print(f"FAILED: {exc}", file=sys.stderr)
            stop(processes)
            show_logs(logs)
            return 1
        found = [problem for flow in saga.flows for problem in demo.problems(flow)]
        found += stop(processes)
        for problem in found:
            print(f"FAILED: {problem}", file=sys.stderr)
        if found:
            show_logs(logs)
            return 1
    print()
    for flow in saga.flows:
        print(
            f"order {flow.request.order_id}: {flow.outcome} as expected "
            f"({len(flow.events)} events across three processes, corr "
            f"{flow.correlation_id[:8]})"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--url",
        default="",
        help="sqlite:///file.db (default: a fresh "
        "temporary one) or any broker URL every process reaches",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per saga")
    args = parser.parse_args(argv)
    if args.url:
        return run(args.url, args.timeout)
    with tempfile.TemporaryDirectory(prefix="order-saga-") as scratch:
        return run(f"sqlite:///{scratch}/saga.db", args.timeout)


if __name__ == "__main__":
    sys.exit(main())
