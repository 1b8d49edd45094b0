"""`eventbus db migrate URL`: what it prints, that it can run from several processes at
once, and its one-line errors (the migrations themselves: tests/patterns/test_migrations.py)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eventbus.cli import app
from eventbus.patterns.schema import SCHEMA_VERSION, VERSIONS_TABLE
from eventbus.patterns.sql import Database
from tests.patterns.schema_v1 import V1_GROUPS, make_v1
from tests.test_cli_errors import one_line_error

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
MIGRATED = re.compile(r"^(\S+) \((.+)\): migrated from version 1 to version (\d+)$", re.M)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"


def test_migrate_says_what_it_did_and_nothing_the_second_time(url: str) -> None:
    asyncio.run(make_v1(url))
    first = runner.invoke(app, ["db", "migrate", url])
    assert first.exit_code == 0, first.output
    assert {m[0]: m[1] for m in MIGRATED.findall(first.output)} == V1_GROUPS
    assert {int(m[2]) for m in MIGRATED.findall(first.output)} == {SCHEMA_VERSION}
    assert (
        f"{len(V1_GROUPS)} of {len(V1_GROUPS)} table group(s) migrated to schema "
        f"version {SCHEMA_VERSION}" in first.output
    )
    second = runner.invoke(app, ["db", "migrate", url])
    assert second.exit_code == 0, second.output
    assert not MIGRATED.findall(second.output)
    assert second.output.count(f"at version {SCHEMA_VERSION}, nothing to do") == len(V1_GROUPS)


def test_migrate_an_empty_database_says_so(tmp_path: Path, url: str) -> None:
    (tmp_path / "app.db").touch()  # an empty file is an empty SQLite database
    result = runner.invoke(app, ["db", "migrate", url])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("nothing to migrate: no eventbus tables in sqlite:///")


async def check_processes_at_once_migrate_once(url: str, processes: int = 4) -> None:
    """`eventbus db migrate` started by several processes at once: each exits 0 and each
    table is migrated by exactly one of them."""
    await make_v1(url)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "eventbus",
            "db",
            "migrate",
            url,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(processes)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(run.communicate() for run in runs)), 120)
    for run, (_, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err.decode()
    migrated = [m[0] for out, _ in outputs for m in MIGRATED.findall(out.decode())]
    assert sorted(migrated) == sorted(V1_GROUPS), [o.decode() for o, _ in outputs]


def test_several_processes_at_once(url: str) -> None:
    asyncio.run(check_processes_at_once_migrate_once(url))


def test_a_database_url_of_another_kind_is_refused() -> None:
    line = one_line_error(runner.invoke(app, ["db", "migrate", "kafka://localhost:9092"]), 4)
    assert "unsupported database URL" in line and "sqlite:///" in line


def test_a_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    line = one_line_error(runner.invoke(app, ["db", "migrate", f"sqlite:///{missing}"]), 8)
    assert str(missing) in line and not missing.exists()


def test_an_in_memory_database_is_refused() -> None:
    line = one_line_error(runner.invoke(app, ["db", "migrate", "sqlite://:memory:"]), 2)
    assert ":memory:" in line


def test_an_unreachable_database_is_a_connection_error_with_the_password_masked() -> None:
    url = "postgresql://app:s3cret@127.0.0.1:1/shop?connect_timeout=2"
    result = runner.invoke(app, ["db", "migrate", url])
    line = one_line_error(result, 7)
    assert "127.0.0.1:1" in line and "s3cret" not in result.output


def test_a_table_of_a_later_release_is_refused(url: str) -> None:
    async def later_release() -> None:
        async with await Database.connect(url) as db, db.transaction() as tx:
            await tx.execute(
                f"UPDATE {VERSIONS_TABLE} SET version = $1 WHERE table_name = 'eventbus_sagas'",
                SCHEMA_VERSION + 1,
            )

    asyncio.run(make_v1(url))
    assert runner.invoke(app, ["db", "migrate", url]).exit_code == 0
    asyncio.run(later_release())
    line = one_line_error(runner.invoke(app, ["db", "migrate", url]), 4)
    assert "'eventbus_sagas'" in line and f"version {SCHEMA_VERSION + 1}" in line
    assert "upgrade eventbus" in line


def test_db_help_lists_migrate() -> None:
    result = runner.invoke(app, ["db", "--help"])
    assert result.exit_code == 0 and "migrate" in result.output, result.output
