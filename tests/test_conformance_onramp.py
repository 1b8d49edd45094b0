"""The on-ramp of docs/adapters/writing.md works as written: a third-party adapter runs the
conformance suite with ``pytest --eventbus-url ...`` and no fixture of its own, and with
its adapter given as a factory, without installing its package first."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUITE = """
    from eventbus.testing import ConformanceSuite

    class TestMine(ConformanceSuite):
        pass
"""
# An adapter under a scheme no package registers: the memory broker behind another name.
ADAPTER = """
    from eventbus.memory import MemoryAdapter

    class MyBrokerAdapter(MemoryAdapter):
        def __init__(self, url: str) -> None:
            super().__init__(url.replace("mybroker://", "memory://", 1))
"""
CASES = "test_publish_subscribe_metadata_intact or test_topic_isolation"


def _pytest(folder: Path, files: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    for name, code in files.items():
        (folder / name).write_text(textwrap.dedent(code))
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTBUS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(ROOT)])
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-p",
            "no:randomly",
            "--rootdir",
            str(folder),
            "-k",
            CASES,
            *args,
        ],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _passed(result: subprocess.CompletedProcess[str], count: int) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert f"{count} passed" in result.stdout, result.stdout[-2000:]


def test_pytest_eventbus_url_runs_the_suite_without_a_target_fixture(tmp_path: Path) -> None:
    result = _pytest(
        tmp_path, {"test_mine.py": SUITE}, "--eventbus-url", f"memory://onramp-{uuid.uuid4().hex}"
    )
    _passed(result, 2)


def test_without_a_url_the_default_target_skips_saying_how_to_give_one(tmp_path: Path) -> None:
    result = _pytest(tmp_path, {"test_mine.py": SUITE}, "-rs")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 skipped" in result.stdout and "--eventbus-url" in result.stdout


def test_a_target_fixture_of_the_module_still_wins(tmp_path: Path) -> None:
    own = (
        SUITE
        + """
    import pytest
    from eventbus.testing import BrokerTarget

    @pytest.fixture
    def target() -> BrokerTarget:
        return BrokerTarget(name="own", url="memory://own-target")
    """
    )
    result = _pytest(tmp_path, {"test_mine.py": own}, "--eventbus-url", "nosuch://x")
    _passed(result, 2)


def test_an_adapter_factory_needs_no_installed_entry_point(tmp_path: Path) -> None:
    with_factory = (
        SUITE
        + """
    import pytest
    from eventbus.testing import BrokerTarget
    from mybroker import MyBrokerAdapter

    @pytest.fixture
    def target() -> BrokerTarget:
        return BrokerTarget(name="mybroker", url="mybroker://factory", adapter=MyBrokerAdapter,
                            in_process=True)
    """
    )
    result = _pytest(tmp_path, {"mybroker.py": ADAPTER, "test_mine.py": with_factory})
    _passed(result, 2)


def test_the_command_line_takes_the_adapter_factory_too(tmp_path: Path) -> None:
    result = _pytest(
        tmp_path,
        {"mybroker.py": ADAPTER, "test_mine.py": SUITE},
        "--eventbus-url",
        f"mybroker://cli-{uuid.uuid4().hex}",
        "--eventbus-adapter",
        "mybroker:MyBrokerAdapter",
    )
    _passed(result, 2)


def test_target_of_a_test_outside_the_suite_is_not_silently_supplied(tmp_path: Path) -> None:
    other = """
    def test_mine(target):
        pass
    """
    result = _pytest(tmp_path, {"test_other.py": other}, "-k", "test_mine")
    assert result.returncode != 0
    assert "conformance suite" in result.stdout
