"""THE NEWCOMER TEST (slow, ~15 s; needs the package registry for pip).

It plays a new user from the docs alone: a fresh virtual environment, the README's
install line (`pip install "./[test]"` of this checkout: with pytest and pytest-asyncio),
the service file and the test file copied from the guide's "Testing your
service", and pytest run on them — which must pass. It catches what the unit tests
cannot: a missing dependency, the pytest plugin not registered by the installed
package, the test kit not shipped in the wheel, a guide example that does not run.
"""

from __future__ import annotations

import os
import subprocess
import venv
from pathlib import Path

import pytest

from tests.doc_blocks import blocks

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.newcomer
@pytest.mark.timeout(180)
def test_a_newcomer_installs_copies_the_guide_and_the_tests_pass(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    assert "pip install ./ " in readme and 'pip install "./[test]"' in readme  # as it says

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    environ = {
        k: v
        for k, v in os.environ.items()
        if k not in ("EVENTBUS_URL", "PYTHONPATH", "VIRTUAL_ENV")
    }
    environ["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", f"{ROOT}[test]"],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert install.returncode == 0, install.stderr[-3000:]

    project = tmp_path / "project"
    project.mkdir()
    files = {b.note: b.code for b in blocks(ROOT / "docs" / "guide.md") if b.marker == "file"}
    assert set(files) == {"shop.py", "test_shop_service.py"}
    for name, code in files.items():
        (project / name).write_text(code)

    tests = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert "5 passed" in tests.stdout, tests.stdout
    # The package the newcomer got is the installed one, not this checkout.
    where = subprocess.run(
        [str(python), "-c", "import eventbus; print(eventbus.__file__)"],
        cwd=project,
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert str(env_dir) in where.stdout, where.stdout
