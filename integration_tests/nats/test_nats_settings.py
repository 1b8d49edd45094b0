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


@pytest.mark.parametrize(
    ("url", "names"),
    [
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
        ("nats://h?tls=true&tls_cert=/c.pem", ["tls_cert", "tls_key"]),
        ("nats://h?ack_wait=5&ack_wait=6", ["ack_wait", "twice"]),
        ("nats+core://h?ack_wait=5", ["ack_wait", "JetStream only"]),
        ("nats+core://h?dedupe_window=5", ["dedupe_window", "JetStream only"]),
        ("nats://h?pending_msgs=5", ["pending_msgs", "core NATS only"]),
        ("nats+core://h?pending_bytes=0", ["pending_bytes", ">= 1"]),
        ("nats://h:99999", ["port"]),
        ("amqp://h", ["nats://"]),
    ],
)
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


def test_tls_is_selected_by_tls_true() -> None:
    s = NatsSettings.from_url("nats://h?tls=true&tls_ca=/ca.pem&tls_verify=false")
    assert s.tls and s.server_urls() == ["tls://h:4222"]
    assert (s.tls_ca, s.tls_verify) == ("/ca.pem", False)
    assert NatsSettings.from_url("nats://h?tls=true").tls_verify is True


def test_tls_options_without_tls_are_refused() -> None:
    """The shared rule: a TLS option without tls=true is an error naming tls=true (0.1
    selected TLS by tls_ca or tls_cert alone; that silent choice is gone)."""
    text = error_of("nats://h?tls_verify=false")
    assert "tls_verify" in text and "tls=true" in text
    for url in ("nats://h?tls_ca=/ca.pem", "nats://h?tls_cert=/c.pem&tls_key=/k.pem"):
        assert "tls=true" in error_of(url)
    assert "tls_key" in error_of("nats://h?tls=true&tls_cert=/c.pem")


def test_shared_names_and_their_deprecated_forms() -> None:
    """client_name and provision are the shared names; name and create_streams still
    parse until 0.2, with one DeprecationWarning naming both new names."""
    s = NatsSettings.from_url("nats://h?client_name=billing&provision=false")
    assert (s.client_name, s.provision) == ("billing", False)
    with pytest.warns(DeprecationWarning) as warned:
        old = NatsSettings.from_url("nats://h?name=billing&create_streams=false")
    assert len(warned) == 1
    text = str(warned[0].message)
    assert "name -> client_name" in text and "create_streams -> provision" in text
    assert (old.client_name, old.provision) == ("billing", False)
    assert "twice" in error_of("nats://h?name=a&client_name=b")


def test_core_nats_accepts_the_shared_options() -> None:
    """start_from and provision are shared: core NATS takes them (it stores nothing, so
    they change nothing there) instead of refusing a URL that works on nats://."""
    s = NatsSettings.from_url(
        "nats+core://h?start_from=earliest&provision=false&client_name=x&connect_timeout=2"
    )
    assert (s.start_from, s.provision, s.client_name, s.connect_timeout) == (
        "earliest",
        False,
        "x",
        2.0,
    )


def test_url_start_from_is_the_adapters_default_for_new_groups() -> None:
    """The URL's start_from is handed to the core (Adapter.start_from), which applies it
    to subscriptions that give none; the adapter never overrides a subscription's."""
    assert NatsAdapter("nats://h?start_from=earliest").start_from == "earliest"
    assert NatsAdapter("nats://h").start_from is None
    assert NatsCoreAdapter("nats+core://h?start_from=earliest").start_from == "earliest"


def test_settings_made_in_code() -> None:
    s = NatsSettings(servers=("n1:4222", "n2:4222"), client_name="billing", ack_wait=60)
    assert s.masked_url == "nats://n1:4222,n2:4222" and s.jetstream
    adapter = NatsAdapter(settings=s)
    assert adapter.settings is s and adapter.capabilities.half_open_bound == 6.0
    assert NatsCoreAdapter(settings=NatsSettings(scheme="nats+core")).settings.jetstream is False
    with pytest.raises(InvalidURLError, match="tls"):
        NatsSettings(tls_ca="/ca.pem")
    with pytest.raises(TypeError, match="URL or settings"):
        NatsAdapter()
    with pytest.raises(TypeError, match="URL or settings"):
        NatsAdapter("nats://h", settings=s)


def test_bad_values_say_what_is_allowed() -> None:
    assert error_of("nats://h?replicas=x").endswith(
        "option replicas='x' in NATS URL 'nats://h?replicas=x' is invalid: must be an integer >= 1"
    )
    assert "max_age='nan'" in error_of("nats://h?max_age=nan")  # NaN is no duration
    assert NatsSettings.from_url("nats://h?max_age=0").max_age == 0.0
    assert [NatsSettings.from_url(f"nats://h?max_deliver={n}").max_deliver for n in (-1, 3)] == [
        -1,
        3,
    ]


def test_half_open_bound_comes_from_the_ping_settings() -> None:
    assert NatsSettings.from_url("nats://h").half_open_bound == 6.0
    s = NatsSettings.from_url("nats://h?ping_interval=0.5&max_pings_out=3")
    assert (s.ping_interval, s.max_pings_out, s.half_open_bound) == (0.5, 3, 2.0)
    assert NatsCoreAdapter("nats+core://h?ping_interval=1").capabilities.half_open_bound == 3.0
    assert NatsAdapter("nats://h?max_pings_out=1").capabilities.half_open_bound == 4.0
