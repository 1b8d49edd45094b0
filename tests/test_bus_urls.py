"""Choosing the broker by URL: $EVENTBUS_URL, unknown schemes, masked passwords, and
adapters found through entry points."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventbus import (
    ConfigurationError,
    EventBus,
    InvalidURLError,
    MemoryAdapter,
    UnknownSchemeError,
    registry_adapters,
)
from eventbus.errors import EventBusError, mask_url
from eventbus.registry_adapters import adapter_class, adapter_from_url
from tests.bus_support import memory_url


def test_from_env_uses_eventbus_url(monkeypatch: pytest.MonkeyPatch) -> None:
    url = memory_url()
    monkeypatch.setenv("EVENTBUS_URL", url)
    bus = EventBus.from_env(source="svc")
    assert isinstance(bus.adapter, MemoryAdapter) and bus.adapter.url == url
    assert bus.source == "svc"
    monkeypatch.delenv("EVENTBUS_URL")
    assert EventBus.from_env().adapter.url == "memory://"
    monkeypatch.setenv("EVENTBUS_URL", "")
    assert EventBus.from_env().adapter.url == "memory://"


def test_from_env_reports_a_bad_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_URL", "nats9://localhost:4222")
    with pytest.raises(UnknownSchemeError):
        EventBus.from_env()


def test_unknown_scheme_lists_installed_schemes_and_recommends_no_unpublished_package() -> None:
    # A package name that is not published invites dependency confusion: never name one.
    with pytest.raises(UnknownSchemeError) as info:
        EventBus.from_url("nats9://user:s3cret@localhost:4222")
    message = str(info.value)
    assert "'nats9'" in message and "s3cret" not in message
    installed = message.split("(installed: ", 1)[1].split(")", 1)[0].split(", ")
    assert {"kafka", "memory"} <= set(installed)
    assert "pip install eventbus-nats" not in message and "eventbus.adapters" in message


def test_totally_unknown_scheme_says_how_to_register_an_adapter() -> None:
    with pytest.raises(UnknownSchemeError, match="no adapter for 'carrierpigeon' ships") as info:
        EventBus("carrierpigeon://coop/1")
    assert "eventbus.adapters" in str(info.value)
    assert isinstance(info.value, ConfigurationError | EventBusError)


def test_url_without_scheme_is_invalid_and_the_password_is_masked() -> None:
    with pytest.raises(InvalidURLError, match="has no scheme") as info:
        adapter_from_url("//admin:hunter2@broker:5672/")
    assert "hunter2" not in str(info.value)
    assert "admin:***@broker:5672" in str(info.value)
    with pytest.raises(InvalidURLError, match="no scheme"):
        EventBus("localhost")


@pytest.mark.parametrize(
    ("url", "suggestion"),
    [
        ("127.0.0.1:5672", "amqp://127.0.0.1:5672"),
        ("localhost:5671", "amqps://localhost:5671"),
        ("localhost:6379", "redis+streams://localhost:6379"),
        ("nats-host:4222", "nats://nats-host:4222"),
        ("broker:9092", "kafka://broker:9092"),
        ("app:hunter2@rabbit:5672", "amqp://app:***@rabbit:5672"),
        ("kafka:9092", "kafka://kafka:9092"),  # a compose service named after its broker
        ("rabbitmq:5672", "amqp://rabbitmq:5672"),
        ("redis:6379/0", "redis+streams://redis:6379/0"),
    ],
)
def test_a_url_without_scheme_gets_one_suggested_from_its_port(url: str, suggestion: str) -> None:
    with pytest.raises(InvalidURLError, match="has no scheme") as info:
        adapter_from_url(url)
    message = str(info.value)
    assert f"did you mean {suggestion}?" in message
    assert "hunter2" not in message and "***" not in message.replace("app:***@", "")


@pytest.mark.parametrize(
    ("url", "suggestion"),
    [
        ("nats:/x", "nats://x"),
        ("kafka:localhost:9092", "kafka://localhost:9092"),
        ("amqp//localhost", "amqp://localhost"),
        ("redis:/localhost:6379", "redis://localhost:6379"),
    ],
)
def test_a_url_missing_its_slashes_is_told_so_not_that_it_has_no_scheme(
    url: str, suggestion: str
) -> None:
    with pytest.raises(InvalidURLError) as info:
        adapter_from_url(url)
    message = str(info.value)
    assert "has no scheme" not in message
    assert f"did you mean {suggestion}?" in message and repr(url) in message


@pytest.mark.parametrize(
    ("url", "suggestion"),
    [
        ("rabbitmq://guest:hunter2@localhost:5672", "amqp://guest:***@localhost:5672"),
        ("rabbit://localhost", "amqp://localhost"),
        ("redis-streams://localhost", "redis+streams://localhost"),
        ("redis_streams://localhost", "redis+streams://localhost"),
        ("jetstream://localhost", "nats://localhost"),
        ("kafak://localhost:9092", "kafka://localhost:9092"),
    ],
)
def test_a_misspelt_scheme_gets_the_right_one_suggested(url: str, suggestion: str) -> None:
    with pytest.raises(UnknownSchemeError) as info:
        adapter_from_url(url)
    message = str(info.value)
    assert f"did you mean {suggestion}?" in message and "hunter2" not in message


def test_unparseable_url_is_invalid() -> None:
    with pytest.raises(InvalidURLError, match="cannot parse"):
        adapter_from_url("memory://[::1")


def test_memory_scheme_resolves_to_the_memory_adapter() -> None:
    assert adapter_class("memory") is MemoryAdapter


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("amqp://guest:guest@rabbit:5672/vhost", "amqp://guest:***@rabbit:5672/vhost"),
        ("redis://:pw@cache:6379/0", "redis://:***@cache:6379/0"),
        ("kafka://broker:9092", "kafka://broker:9092"),
        ("nats://user@host", "nats://user@host"),
        ("sqs://id:p%40ss@host?region=eu", "sqs://id:***@host?region=eu"),
        ("http://[::1", "<unparseable url>"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_memory_adapter_bad_option_is_an_invalid_url() -> None:
    with pytest.raises(InvalidURLError, match="unknown option"):
        EventBus("memory://x?colour=blue")


class _EntryPoint:
    def __init__(self, name: str, loaded: object) -> None:
        self.name, self.value, self._loaded = name, f"fake:{name}", loaded

    def load(self) -> object:
        return self._loaded


def test_entry_point_that_is_not_an_adapter_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        registry_adapters, "entry_points", lambda group: [_EntryPoint("fake", object())]
    )
    with pytest.raises(UnknownSchemeError, match="is not an Adapter"):
        adapter_class("fake")


def test_entry_points_pick_the_adapter_and_memory_works_without_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        registry_adapters, "entry_points", lambda group: [_EntryPoint("fake", _FakeAdapter)]
    )
    assert adapter_class("fake") is _FakeAdapter
    assert adapter_class("memory") is MemoryAdapter  # not installed as a dist: still there


def test_the_installed_adapters_are_scanned_once_and_again_for_a_scheme_not_found(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Scanning the installed distributions costs ~7 ms: kept for every bus after the
    first, scanned again for a scheme it does not have (installed since) and when
    sys.path changes."""
    installed = [_EntryPoint("fake", _FakeAdapter)]
    scans: list[str] = []

    def scanning(group: str) -> list[_EntryPoint]:
        scans.append(group)
        return list(installed)

    monkeypatch.setattr(registry_adapters, "entry_points", scanning)
    for _ in range(3):
        assert adapter_class("fake") is _FakeAdapter
        assert adapter_class("memory") is MemoryAdapter  # the core's, no scan of its own
    assert scans == ["eventbus.adapters"]
    installed.append(_EntryPoint("late", _LateAdapter))  # pip install meanwhile
    assert adapter_class("late") is _LateAdapter
    assert adapter_class("late") is _LateAdapter
    assert len(scans) == 2
    with pytest.raises(UnknownSchemeError, match="'never'"):
        adapter_class("never")  # each miss looks again: not found, not remembered
    assert len(scans) == 3
    monkeypatch.syspath_prepend(str(tmp_path))
    assert adapter_class("fake") is _FakeAdapter
    assert len(scans) == 4


class _FakeAdapter(MemoryAdapter):
    """An adapter class an entry point can name."""


class _LateAdapter(MemoryAdapter):
    """An adapter installed after the first scan."""
