"""Our own examples pass our own linter (`eventbus check`)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from eventbus.cli import app


@pytest.mark.parametrize("module", ["examples.order_saga.events", "examples.cqrs_shop.events"])
def test_example_events_pass_eventbus_check(module: str) -> None:
    result = CliRunner().invoke(app, ["check", module])
    assert result.exit_code == 0, result.stdout + result.stderr
