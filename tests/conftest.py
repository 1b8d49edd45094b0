"""Isolation every unit test gets."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _eventbus_url_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    # `eventbus run/check/publish --url` sets $EVENTBUS_URL for the user's module (so a
    # bus made with EventBus.from_env() uses it); invoked in-process by CliRunner, that
    # would leak into every later test. Whatever a test leaves there is undone.
    monkeypatch.delenv("EVENTBUS_URL", raising=False)
