"""The settings conformance test: the shared options parse the same on every adapter.

One name and one unit per shared concept (``eventbus.url_options.VOCABULARY``):
``start_from``, ``tls_ca``/``tls_cert``/``tls_key``/``tls_verify``, ``client_name``,
``provision``, ``delay_tiers`` and ``connect_timeout``, durations in seconds; the names of
0.1 still parse, with one ``DeprecationWarning`` per URL naming the new one. Every
adapter is built from its URL here, without a broker; what needs one (the start_from
rule on a bus, client_name reaching the broker, provision=false refusing a missing
resource) is ``integration_tests/test_settings_brokers.py``.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from eventbus import InvalidURLError, MemoryAdapter
from eventbus.adapter import Adapter
from eventbus.registry_adapters import adapter_from_url


@dataclasses.dataclass(frozen=True)
class Broker:
    """How one adapter spells a URL: plain, with TLS selected, and how to select it."""

    name: str
    url: str  # no TLS, no query yet
    tls_url: str  # TLS selected by the scheme or an option
    delay_tiers: bool = False  # has delay queues/topics (Kafka, RabbitMQ)

    def with_query(self, query: str, *, tls: bool = False) -> str:
        base = self.tls_url if tls else self.url
        return f"{base}{'&' if '?' in base else '?'}{query}"


BROKERS = [
    Broker("kafka", "kafka://k:9092", "kafka://k:9092?security_protocol=SSL", delay_tiers=True),
    Broker("rabbitmq", "amqp://h/", "amqps://h/", delay_tiers=True),
    Broker("nats", "nats://h:4222", "nats://h:4222?tls=true"),
    Broker("redis", "redis+streams://h:6379/0", "rediss+streams://h:6379/0"),
    Broker(
        "sqs",
        "sqs://127.0.0.1:5000?region=us-east-1",
        "sqs://127.0.0.1:5000?region=us-east-1&endpoint_scheme=https",
    ),
]
# The schemes of a broker without replay besides its main one: start_from is accepted
# there too (a new group starts with what is published once it exists).
OTHER_SCHEMES = [
    Broker("nats+core", "nats+core://h:4222", "nats+core://h:4222?tls=true"),
    Broker("redis-pubsub", "redis://h:6379/0", "rediss://h:6379/0"),
]


def each(case: str, brokers: list[Broker] = BROKERS) -> list[Any]:
    """``brokers`` as the parameters of the test of ``case``, each named after its broker
    (``case`` names what a test proves, for the reader and for ``-k``)."""
    return [pytest.param(broker, id=broker.name) for broker in brokers]


def build(url: str) -> Adapter:
    """The adapter of ``url`` (built, not connected), deprecation warnings as errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        return adapter_from_url(url)


def settings_of(broker: Broker, url: str) -> Any:
    """The settings ``url`` parses to, by ``broker``'s settings class (the adapter is not
    built: with TLS options it would read the certificate files)."""
    plain: Any = build(broker.url)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        return type(plain.settings).from_url(url)


def refusal(url: str) -> str:
    with pytest.raises(InvalidURLError) as raised:
        build(url)
    message = str(raised.value)
    assert "\n" not in message, message
    return message


# -- start_from ------------------------------------------------------------------------------


@pytest.mark.parametrize("broker", each("start_from_everywhere", BROKERS + OTHER_SCHEMES))
@pytest.mark.parametrize("value", ["earliest", "latest"])
def test_every_adapter_accepts_start_from(broker: Broker, value: str) -> None:
    adapter: Any = build(broker.with_query(f"start_from={value}"))
    assert adapter.settings.start_from == value


@pytest.mark.parametrize("broker", each("adapter_start_from"))
def test_the_urls_start_from_is_handed_to_the_core_as_the_default(broker: Broker) -> None:
    """The adapter sets ``Adapter.start_from`` and applies none itself: the core decides
    (the subscription's, else the URL's, else latest: tests/test_start_from.py)."""
    assert build(broker.with_query("start_from=earliest")).start_from == "earliest"
    assert build(broker.url).start_from is None


@pytest.mark.parametrize("broker", each("start_from_everywhere"))
def test_a_bad_start_from_names_the_option_and_the_choices(broker: Broker) -> None:
    message = refusal(broker.with_query("start_from=middle"))
    assert "start_from='middle'" in message and "use earliest or latest" in message


def test_memory_takes_start_from_too() -> None:
    assert MemoryAdapter("memory://vocab?start_from=earliest").start_from == "earliest"


# -- TLS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("broker", each("tls_names"))
def test_the_tls_files_have_one_name_everywhere(broker: Broker) -> None:
    s = settings_of(
        broker, broker.with_query("tls_ca=/ca.pem&tls_cert=/c.pem&tls_key=/k.pem", tls=True)
    )
    assert (s.tls_ca, s.tls_cert, s.tls_key, s.tls_verify) == ("/ca.pem", "/c.pem", "/k.pem", True)


@pytest.mark.parametrize("broker", each("tls_verify"))
def test_tls_verify_can_be_turned_off(broker: Broker) -> None:
    assert settings_of(broker, broker.with_query("tls_verify=false", tls=True)).tls_verify is False


@pytest.mark.parametrize("broker", each("tls_needs_tls"))
def test_tls_options_without_tls_are_refused_saying_how_to_select_it(broker: Broker) -> None:
    message = refusal(broker.with_query("tls_ca=/ca.pem"))
    assert "tls_ca" in message and "need" in message and "TLS" in message


@pytest.mark.parametrize("broker", each("tls_half_certificate"))
def test_a_client_certificate_needs_its_key(broker: Broker) -> None:
    assert "tls_key" in refusal(broker.with_query("tls_cert=/c.pem", tls=True))


# -- client name, provisioning, connect bound ---------------------------------------------------


@pytest.mark.parametrize("broker", each("client_name"))
def test_client_name_has_one_name_everywhere(broker: Broker) -> None:
    adapter: Any = build(broker.with_query("client_name=billing"))
    assert adapter.settings.client_name == "billing"
    assert build(broker.url).settings.client_name == "eventbus"  # type: ignore[attr-defined]


@pytest.mark.parametrize("broker", each("provision"))
def test_provision_is_on_unless_turned_off(broker: Broker) -> None:
    assert build(broker.url).settings.provision is True  # type: ignore[attr-defined]
    adapter: Any = build(broker.with_query("provision=false"))
    assert adapter.settings.provision is False


@pytest.mark.parametrize("broker", each("connect_timeout"))
def test_connect_timeout_is_seconds_everywhere(broker: Broker) -> None:
    adapter: Any = build(broker.with_query("connect_timeout=2.5"))
    assert adapter.settings.connect_timeout == 2.5
    assert "connect_timeout" in refusal(broker.with_query("connect_timeout=0"))


# -- delay tiers -------------------------------------------------------------------------------


@pytest.mark.parametrize("broker", [b for b in BROKERS if b.delay_tiers], ids=lambda b: b.name)
def test_delay_tiers_are_ascending_seconds(broker: Broker) -> None:
    adapter: Any = build(broker.with_query("delay_tiers=0.5,10,60"))
    assert adapter.settings.delay_tiers == (0.5, 10, 60)
    for bad in ("10,1", "1,1", "0,1", "1,x"):
        assert f"delay_tiers='{bad}'" in refusal(broker.with_query(f"delay_tiers={bad}"))


@pytest.mark.parametrize(
    "broker", [p for p in each("delay_tiers_refused") if not p.values[0].delay_tiers]
)
def test_an_adapter_without_delay_queues_does_not_take_delay_tiers(broker: Broker) -> None:
    """NATS and SQS delay natively, Redis redelivers by claim: no tiers to configure."""
    assert "unknown option 'delay_tiers'" in refusal(broker.with_query("delay_tiers=1,10"))


# -- durations are seconds ---------------------------------------------------------------------

SECONDS: dict[str, tuple[str, str, float]] = {
    # broker: (option=value, settings attribute, value in seconds)
    "kafka": ("session_timeout=6.5", "session_timeout", 6.5),
    "rabbitmq": ("publish_timeout=2.5", "publish_timeout", 2.5),
    "nats": ("ack_wait=2.5", "ack_wait", 2.5),
    "redis": ("claim_idle=2.5", "claim_idle", 2.5),
    "sqs": ("read_timeout=12.5", "read_timeout", 12.5),
}


@pytest.mark.parametrize("broker", each("seconds"))
def test_durations_are_seconds_with_fractions(broker: Broker) -> None:
    option, attribute, expected = SECONDS[broker.name]
    adapter: Any = build(broker.with_query(option))
    assert getattr(adapter.settings, attribute) == expected


# -- the names of 0.1 --------------------------------------------------------------------------

DEPRECATED: dict[str, tuple[str, dict[str, Any], bool]] = {
    # broker: (old options, {new attribute: value}, needs TLS selected)
    "kafka": (
        "client_id=orders&create_topics=false&session_timeout_ms=6000"
        "&heartbeat_interval_ms=1000&retry_tiers=5,30",
        {
            "client_name": "orders",
            "provision": False,
            "session_timeout": 6.0,
            "heartbeat_interval": 1.0,
            "delay_tiers": (5, 30),
        },
        False,
    ),
    "rabbitmq": (
        "cafile=/ca.pem&delay_tiers_ms=50,1000&verify=false",
        {"tls_ca": "/ca.pem", "delay_tiers": (0.05, 1.0), "tls_verify": False},
        True,
    ),
    "nats": (
        "name=orders&create_streams=false",
        {"client_name": "orders", "provision": False},
        False,
    ),
    "redis": (
        "ssl_ca_certs=/ca.pem&block_ms=1500&claim_idle_ms=2000",
        {"tls_ca": "/ca.pem", "block": 1.5, "claim_idle": 2.0},
        True,
    ),
}


@pytest.mark.parametrize(
    "broker", [p for p in each("deprecated") if p.values[0].name in DEPRECATED]
)
def test_old_names_still_work_with_one_warning_naming_the_new_ones(broker: Broker) -> None:
    query, expected, tls = DEPRECATED[broker.name]
    with pytest.warns(DeprecationWarning) as warned:
        adapter: Any = adapter_from_url(broker.with_query(query, tls=tls))
    deprecations = [w for w in warned if issubclass(w.category, DeprecationWarning)]
    assert len(deprecations) == 1, [str(w.message) for w in deprecations]
    message = str(deprecations[0].message)
    assert "deprecated" in message and all(name in message for name in expected)
    for attribute, value in expected.items():
        assert getattr(adapter.settings, attribute) == value, attribute


# -- XAdapter(settings=..., client=...) ---------------------------------------------------------


@pytest.mark.parametrize("broker", each("settings_and_client"))
def test_every_adapter_takes_settings_made_in_code(broker: Broker) -> None:
    """``XAdapter(settings=XSettings(...))``: the same adapter as from a URL, built from
    settings an application assembled itself (the ``client=`` half needs a broker)."""
    from_url: Any = build(broker.with_query("client_name=billing"))
    settings = from_url.settings
    adapter: Any = type(from_url)(settings=settings)
    assert adapter.settings is settings and adapter.capabilities == from_url.capabilities
    with pytest.raises(TypeError):
        type(from_url)()


def test_settings_made_in_code_need_no_url() -> None:
    from eventbus_kafka import KafkaAdapter, KafkaSettings
    from eventbus_rabbitmq import RabbitMQAdapter, RabbitMQSettings
    from eventbus_sqs import SqsAdapter, SqsSettings

    made: list[tuple[Callable[..., Any], Any]] = [
        (KafkaAdapter, KafkaSettings(bootstrap_servers=("k1:9092",), client_name="billing")),
        (RabbitMQAdapter, RabbitMQSettings(host="mq", tls=True, client_name="billing")),
        (SqsAdapter, SqsSettings(region="eu-west-1", client_name="billing")),
    ]
    for cls, settings in made:
        adapter = cls(settings=settings)
        assert adapter.settings.client_name == "billing"
        assert adapter.url and "billing" not in adapter.url  # a URL to show, made up
    assert RabbitMQSettings(host="mq", tls=True).port == 5671


# -- client_name reaches the client ------------------------------------------------------------


class _CapturedError(Exception):
    """Raised by a client constructor patched to record what the adapter gave it."""


def _capture(
    monkeypatch: pytest.MonkeyPatch, owner: Any, method: str, seen: dict[str, Any]
) -> None:
    def record(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        seen["args"] = args
        raise _CapturedError(method)

    async def record_async(*args: Any, **kwargs: Any) -> Any:
        return record(*args, **kwargs)

    import inspect

    original = getattr(owner, method)
    monkeypatch.setattr(
        owner, method, record_async if inspect.iscoroutinefunction(original) else record
    )


def _client_name_seen(name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """What the broker client of adapter ``name`` was given as the client name when the
    adapter connected with ``client_name=billing`` (the library's own constructor or
    connect is patched to record its arguments, so this holds however the adapter is
    laid out)."""
    import asyncio

    seen: dict[str, Any] = {}
    broker = next(b for b in BROKERS if b.name == name)
    if name == "kafka":
        import aiokafka

        _capture(monkeypatch, aiokafka.AIOKafkaProducer, "__init__", seen)
    elif name == "rabbitmq":
        import aio_pika

        _capture(monkeypatch, aio_pika.RobustConnection, "__init__", seen)
    elif name == "nats":
        from nats.aio.client import Client

        _capture(monkeypatch, Client, "connect", seen)
    elif name == "redis":
        from redis.asyncio import Redis

        _capture(monkeypatch, Redis, "__init__", seen)
    else:
        import aioboto3

        _capture(monkeypatch, aioboto3.Session, "client", seen)
    adapter = build(broker.with_query("client_name=billing&connect_timeout=1"))
    with pytest.raises(Exception) as raised:  # the patched client refuses
        asyncio.run(adapter.connect())
    assert isinstance(raised.value, _CapturedError) or isinstance(
        raised.value.__cause__ or raised.value.__context__, _CapturedError
    ), raised.value
    if name == "kafka":
        return str(seen["client_id"])
    if name == "rabbitmq":
        return str(seen["client_properties"]["connection_name"])
    if name == "nats":
        return str(seen["name"])
    if name == "redis":
        return str(seen["client_name"])
    return str(seen["config"].user_agent_extra)


@pytest.mark.parametrize("broker", each("client_name"))
def test_client_name_reaches_the_client(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka's client.id, the AMQP connection name ("billing (publish)"), NATS's
    connection name, Redis's CLIENT SETNAME, SQS's user agent suffix."""
    assert _client_name_seen(broker.name, monkeypatch).startswith("billing")
