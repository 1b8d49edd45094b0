"""Dead-letter listing and replay, through the API and the CLI, on the memory broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from typer.testing import CliRunner

from eventbus import Context, Event, EventBus, RetryPolicy
from eventbus.cli import app
from eventbus.dlq import DeadLetters

runner = CliRunner()


class InvoiceIssued(Event, type="test.cli.invoice_issued"):
    invoice_id: str


def test_dead_letters_are_listed_with_reason_and_replayed_once() -> None:
    """A user finds why an event failed, fixes the handler, and replays it exactly once."""

    async def scenario() -> None:
        url = f"memory://{uuid.uuid4().hex}"
        topic = f"invoices-{uuid.uuid4().hex[:8]}"
        broken = True
        handled: list[str] = []
        bus = EventBus.from_url(url, source="billing",
                                retry=RetryPolicy(max_attempts=2, initial_delay=0.001))

        @bus.subscribe(topic, group="billing")
        async def handle(event: InvoiceIssued, ctx: Context) -> None:
            if broken:
                raise ValueError(f"cannot bill {event.invoice_id}")
            handled.append(event.invoice_id)

        dead = DeadLetters(bus.adapter, idle=0.3)
        async with bus:
            env = await bus.publish(InvoiceIssued(invoice_id="A1"), topic=topic)
            for _ in range(200):
                records = await dead.list(topic, "billing")
                if records:
                    break
                await asyncio.sleep(0.02)
            assert [r.envelope.id for r in records] == [env.id]
            record = records[0]
            assert record.reason.startswith("ValueError: cannot bill A1")
            assert record.exception == "builtins.ValueError"
            assert record.attempts == 2
            assert (record.topic, record.group) == (topic, "billing")
            assert "Traceback" in record.traceback
            assert record.original.extensions == {}
            # Listing twice shows the same letter: browsing never consumes.
            assert [r.envelope.id for r in await dead.list(topic, "billing")] == [env.id]

            broken = False
            assert await dead.replay(topic, "billing") == 1
            for _ in range(200):
                if handled:
                    break
                await asyncio.sleep(0.01)
            assert handled == ["A1"]
            assert await dead.replay(topic, "billing") == 0

    asyncio.run(scenario())


def test_cli_publish_prints_the_event_id() -> None:
    result = runner.invoke(app, ["publish", "cli-topic", "--type", "x.y", "--data", '{"a": 1}',
                                 "--url", "memory://cli"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.strip()) == 36


def test_cli_publish_rejects_bad_json_and_bad_urls() -> None:
    bad_json = runner.invoke(app, ["publish", "t", "--type", "x", "--data", "{nope"])
    assert bad_json.exit_code == 2
    assert "--data is not valid JSON" in bad_json.output
    bad_url = runner.invoke(app, ["publish", "t", "--type", "x", "--url", "nats9://h:1"])
    assert bad_url.exit_code == 2
    assert "no eventbus adapter is installed for scheme 'nats9'" in bad_url.output


def test_cli_dlq_list_and_replay_on_an_empty_queue() -> None:
    listed = runner.invoke(app, ["dlq", "list", "orders", "billing", "--json",
                                 "--url", "memory://empty"])
    assert listed.exit_code == 0, listed.output
    assert "0 dead letter(s) on orders/billing" in listed.output
    replayed = runner.invoke(app, ["dlq", "replay", "orders", "billing", "--url", "memory://e"])
    assert replayed.exit_code == 0
    assert "replayed 0 dead letter(s)" in replayed.output


def test_cli_run_rejects_a_target_that_is_not_a_bus() -> None:
    result = runner.invoke(app, ["run", "json:dumps"])
    assert result.exit_code != 0
    assert "not an EventBus" in result.output


def test_cli_run_serves_until_sigterm_and_shuts_down_gracefully(tmp_path: Path) -> None:
    """`eventbus run module:bus` starts the subscriptions and exits 0 on SIGTERM."""
    (tmp_path / "svc.py").write_text(textwrap.dedent("""
        import sys
        from eventbus import EventBus
        bus = EventBus.from_url("memory://svc", source="svc")

        @bus.subscribe("pings", group="svc")
        async def on_ping(envelope) -> None:
            pass

        def make():
            print("ready", file=sys.stderr, flush=True)
            return bus
    """))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventbus.cli", "run", "svc:make"],
        cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "eventbus running" in line:
            break
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0, "".join(lines) + proc.stderr.read()
