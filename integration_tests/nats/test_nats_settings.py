"""NATS URL settings: every option validated, one-line errors, secrets masked (no broker)."""

from __future__ import annotations

import pytest
from eventbus_nats import NatsAdapter, NatsCoreAdapter, NatsSettings

from eventbus.errors import InvalidURLError
from eventbus.registry_adapters import adapter_from_url


def error_of(url: str) -> str:
    with pytest.raises(InvalidURLError) as raised:
        NatsSettings.from_url(url)
    text = str(raised.value)
    assert "\n" not in text, f"not a one-line error: {text!r}"
    return text


def test_defaults_are_durable_and_safe() -> None:
    s = NatsSettings.from_url("nats://127.0.0.1:4222")
    assert s.jetstream and s.storage == "file" and s.dedupe_window == 120.0
    assert s.max_deliver == -1, "an unlimited max_deliver leaves the retry budget to the bus"
    assert s.servers == ("127.0.0.1:4222",)
    assert NatsSettings.from_url("nats://a,b:4223").servers == ("a:4222", "b:4223")


def test_schemes_pick_the_adapter() -> None:
    assert isinstance(adapter_from_url("nats://127.0.0.1:4222"), NatsAdapter)
    core = adapter_from_url("nats+core://127.0.0.1:4222")
    assert isinstance(core, NatsCoreAdapter)
    assert not core.capabilities.persistent and not core.capabilities.redelivery
    assert core.capabilities.dedupe_window is None
    jetstream = adapter_from_url("nats://127.0.0.1:4222?dedupe_window=30")
    assert jetstream.capabilities.dedupe_window == 30.0


@pytest.mark.parametrize(("url", "names"), [
    ("nats://h?bogus=1", ["bogus", "accepts"]),
    ("nats://h?ack_wait=0", ["ack_wait"]),
    ("nats://h?ack_wait=0.5", ["ack_wait", "1 second"]),
    ("nats://h?storage=disk", ["storage", "file or memory"]),
    ("nats://h?start_from=middle", ["start_from", "earliest or latest"]),
    ("nats://h?max_deliver=0", ["max_deliver", "-1"]),
    ("nats://h?max_deliver=1", ["max_deliver", "at least 2", "carried over"]),
    ("nats://h?ping_interval=0", ["ping_interval"]),
    ("nats://h?max_pings_out=0", ["max_pings_out", ">= 1"]),
    ("nats://h?replicas=0", ["replicas"]),
    ("nats://h?stream_prefix=a.b", ["stream_prefix"]),
    ("nats://h?tls_cert=/c.pem", ["tls_cert", "tls_key"]),
    ("nats://h?ack_wait=5&ack_wait=6", ["ack_wait", "twice"]),
    ("nats+core://h?ack_wait=5", ["ack_wait", "JetStream only"]),
    ("nats+core://h?dedupe_window=5", ["dedupe_window", "JetStream only"]),
    ("nats://h?pending_msgs=5", ["pending_msgs", "core NATS only"]),
    ("nats+core://h?pending_bytes=0", ["pending_bytes", ">= 1"]),
    ("nats://h:99999", ["port"]),
    ("amqp://h", ["nats://"]),
])
def test_invalid_options_name_the_option(url: str, names: list[str]) -> None:
    text = error_of(url)
    for name in names:
        assert name in text, f"{name!r} missing from: {text}"


def test_secrets_never_shown() -> None:
    assert "hunter2" not in error_of("nats://bob:hunter2@h?bogus=1")
    assert "s3cret-token" not in error_of("nats://s3cret-token@h?bogus=1")
    s = NatsSettings.from_url("nats://bob:hunter2@h")
    assert (s.user, s.password) == ("bob", "hunter2")
    assert "hunter2" not in s.masked_url and "hunter2" not in repr(s)
    token = NatsSettings.from_url("nats://s3cret-token@h")
    assert token.token == "s3cret-token" and "s3cret-token" not in token.masked_url


def test_tls_files_select_tls() -> None:
    s = NatsSettings.from_url("nats://h?tls_ca=/ca.pem")
    assert s.tls and s.server_urls() == ["tls://h:4222"]


def test_bad_values_say_what_is_allowed() -> None:
    assert error_of("nats://h?replicas=x").endswith(
        "option replicas='x' in NATS URL 'nats://h?replicas=x' is invalid: "
        "must be an integer >= 1")
    assert "max_age='nan'" in error_of("nats://h?max_age=nan")  # NaN is no duration
    assert NatsSettings.from_url("nats://h?max_age=0").max_age == 0.0
    assert [NatsSettings.from_url(f"nats://h?max_deliver={n}").max_deliver for n in (-1, 3)] == [
        -1, 3]


def test_half_open_bound_comes_from_the_ping_settings() -> None:
    assert NatsSettings.from_url("nats://h").half_open_bound == 6.0
    s = NatsSettings.from_url("nats://h?ping_interval=0.5&max_pings_out=3")
    assert (s.ping_interval, s.max_pings_out, s.half_open_bound) == (0.5, 3, 2.0)
    assert NatsCoreAdapter("nats+core://h?ping_interval=1").capabilities.half_open_bound == 3.0
    assert NatsAdapter("nats://h?max_pings_out=1").capabilities.half_open_bound == 4.0
