"""What the six distributions promise a user once installed: their types, one version, and
a library that installs and imports without the command line's dependencies."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
from importlib.metadata import metadata, requires
from importlib.metadata import version as dist_version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import eventbus

ROOT = Path(__file__).resolve().parent.parent
ADAPTERS = ("kafka", "nats", "rabbitmq", "redis", "sqs")
# Distribution -> its project folder and import package.
DISTRIBUTIONS = {"eventbus": (ROOT, "eventbus")} | {
    f"eventbus-{broker}": (ROOT / "adapters" / broker, f"eventbus_{broker}") for broker in ADAPTERS
}
CLI_EXTRA = ("typer", "rich")
EXTRA_HINT = 'pip install "eventbus[cli]"'


def test_every_package_is_typed_for_a_user_type_checking_from_outside_the_checkout(
    tmp_path: Path,
) -> None:
    """Without ``py.typed`` mypy skips an installed package and every name is ``Any``."""
    for folder, package in DISTRIBUTIONS.values():
        assert (folder / package / "py.typed").is_file(), f"{package} has no py.typed"
    (tmp_path / "app.py").write_text(
        textwrap.dedent("""
        from eventbus import EventBus
        from eventbus_kafka import KafkaAdapter
        from eventbus_nats import NatsAdapter
        from eventbus_rabbitmq import RabbitMQAdapter
        from eventbus_redis import RedisStreamsAdapter
        from eventbus_sqs import SqsAdapter

        reveal_type(EventBus)
        reveal_type(KafkaAdapter)
        reveal_type(NatsAdapter)
        reveal_type(RabbitMQAdapter)
        reveal_type(RedisStreamsAdapter)
        reveal_type(SqsAdapter)
    """)
    )
    checked = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "app.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    revealed = [line for line in checked.stdout.splitlines() if "Revealed type" in line]
    assert len(revealed) == 6 and not any('"Any"' in line for line in revealed), checked.stdout


def test_every_distribution_is_apache_2_and_its_source_distribution_carries_the_text() -> None:
    """A wheel built from the sdist (as ``uv build`` does) has it in its dist-info."""
    assert (ROOT / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]
    for dist, (folder, _) in DISTRIBUTIONS.items():
        assert metadata(dist)["License"] == "Apache-2.0", dist
        if folder != ROOT:  # the root's LICENSE is found by hatch's default license-files
            sdist = tomllib.loads((folder / "pyproject.toml").read_text())["tool"]["hatch"][
                "build"
            ]["targets"]["sdist"]
            assert (folder / next(iter(sdist["force-include"]))).resolve() == ROOT / "LICENSE"


def test_the_version_is_written_once_in_eventbus_init() -> None:
    """Every pyproject reads ``eventbus.__version__``; the installed metadata agrees."""
    for dist, (folder, _) in DISTRIBUTIONS.items():
        pyproject = tomllib.loads((folder / "pyproject.toml").read_text())
        project = pyproject["project"]
        assert "version" not in project and "version" in project["dynamic"], dist
        source = folder / pyproject["tool"]["hatch"]["version"]["path"]
        assert source.resolve() == ROOT / "eventbus" / "__init__.py", dist
        assert dist_version(dist) == eventbus.__version__, (
            f"{dist} is installed at {dist_version(dist)}, the source says "
            f"{eventbus.__version__}: run `make setup`"
        )


def test_adapters_accept_this_eventbus_and_not_the_next_minor_release() -> None:
    """An adapter is released with the core; the core's next minor may change the contract."""
    current = Version(eventbus.__version__)
    next_minor = f"{current.major}.{current.minor + 1}.0"
    for broker in ADAPTERS:
        required = [
            Requirement(line)
            for line in requires(f"eventbus-{broker}") or ()
            if Requirement(line).name == "eventbus"
        ]
        assert len(required) == 1, broker
        specifier = required[0].specifier
        assert specifier.contains(current) and not specifier.contains(next_minor), (
            f"eventbus-{broker} requires eventbus{specifier}"
        )


def test_the_eventbus_command_prints_the_version() -> None:
    command = Path(sysconfig.get_path("scripts")) / "eventbus"
    printed = subprocess.run(
        [str(command), "--version"], capture_output=True, text=True, timeout=60
    )
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == f"eventbus {eventbus.__version__}\n"


def test_typer_and_rich_come_only_with_the_cli_extra() -> None:
    """``pip install eventbus`` for a service that never runs the command stays small."""
    for line in requires("eventbus") or ():
        requirement = Requirement(line)
        if requirement.name in CLI_EXTRA:
            assert requirement.marker is not None, line
            assert requirement.marker.evaluate({"extra": "cli"}), line
            assert not requirement.marker.evaluate({"extra": ""}), line


def without_cli_extra(tmp_path: Path) -> dict[str, str]:
    """An environment whose Python cannot import typer, rich or click."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "for name in ('typer', 'rich', 'click'):\n"
        "    sys.modules[name] = None  # import raises ModuleNotFoundError\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != "EVENTBUS_URL"}
    environ["PYTHONPATH"] = str(hide)
    return environ


def test_the_library_and_the_test_kit_import_without_the_cli_extra(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import importlib.util, sys
        assert importlib.util.find_spec("typer") is None, "typer is not hidden"
        import eventbus, eventbus.testing, eventbus.testing.plugin, eventbus.patterns
        from eventbus.testing import TestBus
        print("imported")
    """)
    ran = subprocess.run(
        [sys.executable, "-c", code],
        env=without_cli_extra(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0 and ran.stdout == "imported\n", ran.stderr


@pytest.mark.parametrize("how", ["command", "python -m eventbus"])
def test_the_command_without_the_cli_extra_says_how_to_install_it(tmp_path: Path, how: str) -> None:
    argv = (
        [str(Path(sysconfig.get_path("scripts")) / "eventbus")]
        if how == "command"
        else [sys.executable, "-m", "eventbus"]
    )
    ran = subprocess.run(
        [*argv, "--version"],
        env=without_cli_extra(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 3, ran.stdout + ran.stderr
    assert ran.stdout == "" and "Traceback" not in ran.stderr, ran.stderr
    lines = ran.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), ran.stderr
    assert EXTRA_HINT in lines[0] and "typer" in lines[0], ran.stderr


def test_the_entry_point_runs_the_cli_or_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same two paths in this process (the subprocess tests above are not measured)."""
    from eventbus.__main__ import main

    monkeypatch.setattr(sys, "argv", ["eventbus", "--version"])
    with pytest.raises(SystemExit) as ran:
        main()
    assert ran.value.code == 0 and capsys.readouterr().out == f"eventbus {eventbus.__version__}\n"
    monkeypatch.setitem(sys.modules, "rich", None)  # what find_spec sees when it is missing
    with pytest.raises(SystemExit) as refused:
        main()
    assert refused.value.code == 3
    assert EXTRA_HINT in capsys.readouterr().err


def test_importing_the_cli_without_the_extra_names_the_extra(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        try:
            import eventbus.cli
        except ModuleNotFoundError as missing:
            print(missing.name, "|", missing)
    """)
    ran = subprocess.run(
        [sys.executable, "-c", code],
        env=without_cli_extra(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    name, _, message = ran.stdout.strip().partition(" | ")
    assert name in CLI_EXTRA and EXTRA_HINT in message, ran.stdout


def test_the_ci_workflow_runs_every_python_the_distributions_claim() -> None:
    """Classifiers, ``requires-python`` and the forge's matrix name the same versions."""
    workflow = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    # The matrix line is a JSON-compatible flow list (PyYAML is not a dependency here).
    found = re.search(r"^\s+python: (\[.*\])$", workflow, re.MULTILINE)
    assert found and "bash .ci/run" in workflow, "ci.yml: no Python matrix, or no .ci/run"
    matrix: list[str] = json.loads(found[1])
    prefix = "Programming Language :: Python :: 3."
    for dist, (folder, _) in DISTRIBUTIONS.items():
        project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
        claimed = [
            c.removeprefix("Programming Language :: Python :: ")
            for c in project["classifiers"]
            if c.startswith(prefix)
        ]
        assert claimed == matrix, f"{dist} claims {claimed}, CI runs {matrix}"
        assert project["requires-python"] == f">={matrix[0]}", dist
