"""`eventbus publish`: data inline, from a file or stdin; --type checked against the service."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eventbus import MemoryAdapter, TopicNotFoundError
from eventbus.cli import _common as cli
from eventbus.cli import app

runner = CliRunner()


@pytest.fixture
def url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A private memory broker the CLI may use: the test holds it in its own process."""
    monkeypatch.setattr(cli, "IN_PROCESS_SCHEMES", frozenset())
    monkeypatch.setenv("EVENTBUS_URL", "")  # so that what `--url` sets is undone after
    monkeypatch.delenv("EVENTBUS_URL")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return f"memory://{uuid.uuid4().hex}"


def published(url: str, topic: str) -> list[dict[str, object]]:
    records = asyncio.run(MemoryAdapter(url).read(topic))
    return [json.loads(r.envelope.data) for r in records if r.envelope is not None]


def test_data_from_a_file(url: str, tmp_path: Path) -> None:
    (tmp_path / "order.json").write_text('{"order_id": "A1", "total": 12.5}')
    result = runner.invoke(
        app, ["publish", "orders", "-t", "order.placed", "--data", "@order.json", "--url", url]
    )
    assert result.exit_code == 0, result.output
    assert published(url, "orders") == [{"order_id": "A1", "total": 12.5}]


def test_data_from_stdin(url: str) -> None:
    result = runner.invoke(
        app,
        ["publish", "orders", "-t", "order.placed", "--data", "-", "--url", url],
        input='{"order_id": "B2"}\n',
    )
    assert result.exit_code == 0, result.output
    assert published(url, "orders") == [{"order_id": "B2"}]


def test_unreadable_or_invalid_data_is_one_line(url: str, tmp_path: Path) -> None:
    missing = runner.invoke(
        app, ["publish", "orders", "-t", "x", "--data", "@nope.json", "--url", url]
    )
    assert missing.exit_code == cli.EXIT_USAGE
    assert missing.output.startswith("error: --data @nope.json: cannot read nope.json")
    (tmp_path / "bad.json").write_text("{oops")
    bad = runner.invoke(app, ["publish", "orders", "-t", "x", "--data", "@bad.json", "--url", url])
    assert bad.exit_code == cli.EXIT_USAGE
    assert "--data is not valid JSON (bad.json)" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_type_is_checked_against_the_services_registry(url: str, tmp_path: Path) -> None:
    name = f"svc_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(f"""
        from eventbus import Event, EventBus

        class OrderPlaced(Event, type="{name}.order.placed"):
            order_id: str

        class OrderShipped(Event, type="{name}.order.shipped"):
            order_id: str

        bus = EventBus.from_env(source="svc")
    """)
    )
    typo = runner.invoke(
        app,
        ["publish", "orders", "-t", f"{name}.order.placd", "--app", f"{name}:bus", "--url", url],
    )
    assert typo.exit_code == cli.EXIT_USAGE, typo.output
    assert typo.output.startswith(f"error: unknown event type '{name}.order.placd' in ")
    assert f"did you mean {name}.order.placed" in typo.output
    assert len(typo.output.strip().splitlines()) == 1
    ok = runner.invoke(
        app,
        [
            "publish",
            "orders",
            "-t",
            f"{name}.order.placed",
            "--data",
            '{"order_id": "C3"}',
            "--app",
            f"{name}:bus",
            "--url",
            url,
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert published(url, "orders") == [{"order_id": "C3"}]


def _service(tmp_path: Path) -> str:
    name = f"svc_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(f"""
        from eventbus import Event, EventBus

        class OrderPlaced(Event, type="{name}.order.placed", topic="{name}-orders", version=3):
            order_id: str
            total: float = 0.0

        bus = EventBus.from_env(source="svc")
    """)
    )
    return name


def test_with_app_the_data_is_checked_against_the_class(url: str, tmp_path: Path) -> None:
    name = _service(tmp_path)
    wrong = runner.invoke(
        app,
        [
            "publish",
            f"{name}-orders",
            "-t",
            f"{name}.order.placed",
            "--data",
            '{"order": "C3", "total": "lots"}',
            "--app",
            f"{name}:bus",
            "--url",
            url,
        ],
    )
    assert wrong.exit_code == cli.EXIT_USAGE, wrong.output
    assert wrong.output.startswith(f"error: --data does not fit OrderPlaced ({name}.order.placed)")
    assert "order_id: Field required" in wrong.output and "total:" in wrong.output
    assert len(wrong.output.strip().splitlines()) == 1
    with pytest.raises(TopicNotFoundError):  # nothing was published
        published(url, f"{name}-orders")


def test_with_app_the_topic_defaults_to_the_classs_and_so_does_the_version(
    url: str, tmp_path: Path
) -> None:
    name = _service(tmp_path)
    result = runner.invoke(
        app,
        [
            "publish",
            "-t",
            f"{name}.order.placed",
            "--data",
            '{"order_id": "D4"}',
            "--app",
            f"{name}:bus",
            "--url",
            url,
        ],
    )
    assert result.exit_code == 0, result.output
    records = asyncio.run(MemoryAdapter(url).read(f"{name}-orders"))
    assert [json.loads(r.envelope.data) for r in records if r.envelope] == [{"order_id": "D4"}]
    assert [r.envelope.dataversion for r in records if r.envelope] == [3]


def test_with_app_another_topic_than_the_classs_is_pointed_out(url: str, tmp_path: Path) -> None:
    name = _service(tmp_path)
    result = runner.invoke(
        app,
        [
            "publish",
            "elsewhere",
            "-t",
            f"{name}.order.placed",
            "--data",
            '{"order_id": "E5"}',
            "--app",
            f"{name}:bus",
            "--url",
            url,
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"OrderPlaced is published to '{name}-orders' by default" in result.stderr
    assert published(url, "elsewhere") == [{"order_id": "E5"}]


def test_without_app_a_topic_is_needed(url: str) -> None:
    result = runner.invoke(app, ["publish", "-t", "order.placed", "--url", url])
    assert result.exit_code == cli.EXIT_USAGE
    assert "give the topic" in result.output and "--app" in result.output
