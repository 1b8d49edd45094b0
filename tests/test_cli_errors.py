"""Every expected CLI failure is one ``error: ...`` line (no traceback) with its own exit code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from eventbus import registry_adapters
from eventbus.cli import _common as cli
from eventbus.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No $EVENTBUS_URL from outside; `--url` sets it for the user's module, undone here."""
    # setenv first: delenv of an unset variable records nothing to undo, and the value
    # `--url` leaves would reach later tests (an example module built from the env).
    monkeypatch.setenv("EVENTBUS_URL", "")
    monkeypatch.delenv("EVENTBUS_URL")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))


def one_line_error(result: Result, code: int) -> str:
    """The error line, after checking it is the only output and the exit code."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


def service(tmp_path: Path, body: str) -> str:
    """Write a service module with a unique name; returns that name."""
    name = f"svc_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    return name


def test_version_and_python_dash_m() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.startswith("eventbus "), result.output
    proc = subprocess.run(
        [sys.executable, "-m", "eventbus", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == result.stdout
    helped = subprocess.run(
        [sys.executable, "-m", "eventbus", "dlq", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert helped.returncode == 0 and "purge" in helped.stdout, helped.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["publish", "orders", "--type", "x"],
        ["dlq", "list", "orders", "billing"],
        ["dlq", "show", "orders", "billing", "some-id"],
        ["dlq", "replay", "orders", "billing", "--yes"],
        ["dlq", "purge", "orders", "billing", "--yes"],
    ],
)
@pytest.mark.parametrize("how", ["default", "flag", "env"])
def test_publish_and_dlq_refuse_the_in_process_broker(
    argv: list[str], how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each process has its own memory broker: exiting 0 into it helped nobody."""
    if how == "flag":
        argv = [*argv, "--url", "memory://shared"]
    elif how == "env":
        monkeypatch.setenv("EVENTBUS_URL", "memory://")
    line = one_line_error(runner.invoke(app, argv), cli.EXIT_USAGE)
    assert "in-memory broker lives inside one process" in line
    assert "--url kafka://localhost:9092" in line and "docker compose" in line
    assert "--url sqlite:///eventbus.db" in line, "the broker needing no server is not named"


def test_url_falls_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_URL", "nats9://broker:4222")
    line = one_line_error(
        runner.invoke(app, ["dlq", "list", "orders", "billing"]), cli.EXIT_UNKNOWN_SCHEME
    )
    assert "scheme 'nats9'" in line
    # --url wins over the environment.
    line = one_line_error(
        runner.invoke(app, ["publish", "t", "--type", "x", "--url", "nats8://b:1"]),
        cli.EXIT_UNKNOWN_SCHEME,
    )
    assert "scheme 'nats8'" in line


def test_unknown_scheme_while_importing_the_service_names_the_line(tmp_path: Path) -> None:
    """Was a 70-line traceback; `run` also takes --url now (it was rejected)."""
    name = service(
        tmp_path,
        """
        from eventbus import EventBus

        bus = EventBus.from_env(source="svc")
    """,
    )
    line = one_line_error(
        runner.invoke(app, ["run", f"{name}:bus", "--url", "nats9://h:1"]), cli.EXIT_UNKNOWN_SCHEME
    )
    assert "no eventbus adapter is installed for scheme 'nats9' (installed: " in line
    assert f"{name}.py:4 while importing {name}" in line
    assert "pip install eventbus-nats" not in line


def test_unknown_scheme_recommends_only_the_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    """Naming an unpublished package invites dependency confusion: point at the repo."""
    monkeypatch.setattr(registry_adapters, "entry_points", lambda group: [])
    line = one_line_error(
        runner.invoke(app, ["publish", "t", "--type", "x", "--url", "kafka://h:9092"]),
        cli.EXIT_UNKNOWN_SCHEME,
    )
    assert "(installed: memory)" in line
    assert "pip install ./adapters/kafka" in line
    assert '"eventbus-kafka @ git+<eventbus repository URL>#subdirectory=adapters/kafka"' in line


def test_bare_host_port_suggests_kafka(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    line = one_line_error(
        runner.invoke(app, ["publish", "t", "--type", "x", "--url", "localhost:9092"]),
        cli.EXIT_CONFIG,
    )
    assert "did you mean kafka://localhost:9092?" in line
    name = service(tmp_path, "from eventbus import EventBus\nbus = EventBus.from_env()\n")
    monkeypatch.setenv("EVENTBUS_URL", "broker.internal:9092")
    line = one_line_error(runner.invoke(app, ["run", f"{name}:bus"]), cli.EXIT_CONFIG)
    assert "did you mean kafka://broker.internal:9092?" in line


def test_incomplete_sasl_settings_are_one_line() -> None:
    line = one_line_error(
        runner.invoke(
            app,
            [
                "dlq",
                "list",
                "orders",
                "billing",
                "--url",
                "kafka://127.0.0.1:1?sasl_mechanism=PLAIN&sasl_password=s3cret",
            ],
        ),
        cli.EXIT_CONFIG,
    )
    assert "sasl_mechanism" in line and "s3cret" not in line
    # Mechanism without credentials: whatever the adapter raises, one line.
    result = runner.invoke(
        app,
        [
            "publish",
            "t",
            "--type",
            "x",
            "--url",
            "kafka://127.0.0.1:1?security_protocol=SASL_PLAINTEXT&sasl_mechanism=PLAIN",
        ],
    )
    assert result.exit_code in (cli.EXIT_CONFIG, cli.EXIT_CONNECTION)
    assert "sasl" in one_line_error(result, result.exit_code).lower()


def test_an_import_error_inside_the_service_shows_its_file_and_line(tmp_path: Path) -> None:
    name = service(
        tmp_path,
        """
        import os

        import not_a_module_anyone_has
    """,
    )
    line = one_line_error(runner.invoke(app, ["run", f"{name}:bus"]), cli.EXIT_IMPORT)
    assert f"cannot import {name!r}: {tmp_path / name}.py:4: " in line
    assert "No module named 'not_a_module_anyone_has'" in line


def test_a_syntax_error_shows_its_file_and_line(tmp_path: Path) -> None:
    name = service(tmp_path, "from eventbus import EventBus\n\nbus = EventBus(\n")
    line = one_line_error(runner.invoke(app, ["run", f"{name}:bus"]), cli.EXIT_IMPORT)
    assert f"{name}.py:3: " in line


def test_an_exception_at_import_shows_the_users_line(tmp_path: Path) -> None:
    name = service(
        tmp_path,
        """
        settings = {}
        port = settings["port"]
    """,
    )
    line = one_line_error(runner.invoke(app, ["run", f"{name}:bus"]), cli.EXIT_IMPORT)
    assert f"{name}.py:3: KeyError: 'port'" in line


def test_a_missing_module_says_where_it_looked() -> None:
    line = one_line_error(runner.invoke(app, ["run", "no_such_service_xyz:bus"]), cli.EXIT_IMPORT)
    assert "no such module" in line and "PYTHONPATH" in line


def test_a_target_that_is_missing_or_not_a_bus(tmp_path: Path) -> None:
    name = service(
        tmp_path,
        """
        from eventbus import EventBus
        service_bus = EventBus("memory://x")
        answer = 42

        def broken():
            raise RuntimeError("no config")
    """,
    )
    line = one_line_error(runner.invoke(app, ["run", f"{name}:bus"]), cli.EXIT_TARGET)
    assert "has no attribute 'bus'; it has EventBus attribute(s): service_bus" in line
    line = one_line_error(runner.invoke(app, ["run", f"{name}:answer"]), cli.EXIT_TARGET)
    assert "is a int, not an EventBus" in line
    line = one_line_error(runner.invoke(app, ["run", f"{name}:broken"]), cli.EXIT_TARGET)
    assert f"{name}:broken() failed at " in line and "RuntimeError: no config" in line
    line = one_line_error(runner.invoke(app, ["run", "json:dumps"]), cli.EXIT_TARGET)
    assert "not an EventBus nor a function returning one" in line
    line = one_line_error(runner.invoke(app, ["run", "nocolon"]), cli.EXIT_TARGET)
    assert "is not module:attribute" in line


def test_a_real_console_run_prints_no_traceback(tmp_path: Path) -> None:
    """The same through the installed entry point, in its own process."""
    name = service(tmp_path, "from eventbus import EventBus\nbus = EventBus.from_env()\n")
    proc = subprocess.run(
        [sys.executable, "-m", "eventbus", "run", f"{name}:bus", "--url", "carrierpigeon://x"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == cli.EXIT_UNKNOWN_SCHEME, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")]


def test_a_bare_host_port_gets_the_scheme_of_its_port_not_always_kafka() -> None:
    line = one_line_error(
        runner.invoke(app, ["publish", "t", "--type", "x", "--url", "localhost:5672"]),
        cli.EXIT_CONFIG,
    )
    assert "did you mean amqp://localhost:5672?" in line and "kafka://localhost" not in line
    line = one_line_error(
        runner.invoke(app, ["publish", "t", "--type", "x", "--url", "127.0.0.1:6379"]),
        cli.EXIT_CONFIG,
    )
    assert "did you mean redis+streams://127.0.0.1:6379?" in line and "127***" not in line


def test_a_target_that_is_a_class_is_not_called(tmp_path: Path) -> None:
    """`eventbus run signup:UserSignedUp` used to call the class and print its
    ValidationError; a class is never the factory of a bus."""
    name = service(
        tmp_path,
        """
        from eventbus import Event, EventBus

        class UserSignedUp(Event, type="user.signed-up"):
            user_id: str

        bus = EventBus("memory://x")
    """,
    )
    line = one_line_error(runner.invoke(app, ["run", f"{name}:UserSignedUp"]), cli.EXIT_TARGET)
    assert f"{name}:UserSignedUp is the class UserSignedUp (an event), not an EventBus" in line
    assert "it has EventBus attribute(s): bus" in line and "ValidationError" not in line
