"""The RabbitMQ adapter's settings and codec, without a broker."""

from __future__ import annotations

import contextlib

import pytest
from eventbus_rabbitmq import RabbitMQAdapter, RabbitMQSettings
from eventbus_rabbitmq.codec import ATTEMPT_HEADER, decode, encode, message_size, retry_headers
from eventbus_rabbitmq.provision import delay_queues

from eventbus.envelope import Envelope
from eventbus.errors import InvalidURLError


def full_envelope() -> Envelope:
    return Envelope.create(
        type="shop.order.placed",
        source="/shop",
        data=b'{"a":1}',
        datacontenttype="application/json",
        subject="order-1",
        partitionkey="order-A-1",
        correlationid="c-1",
        extensions={"tenant": "acme"},
        dataversion=2,
    )


def test_url_parts_and_vhost_from_the_path() -> None:
    s = RabbitMQSettings.from_url(
        "amqps://app:s%40cret@mq.example.com/orders%2Fprod?queue_type=quorum&tls_ca=/ca.pem"
    )
    assert (s.host, s.port, s.tls, s.username, s.password) == (
        "mq.example.com",
        5671,
        True,
        "app",
        "s@cret",
    )
    assert s.vhost == "orders/prod" and s.queue_type == "quorum" and s.tls_ca == "/ca.pem"
    assert "s@cret" not in repr(s) and "cret" not in s.masked_url
    default = RabbitMQSettings.from_url("amqp://localhost")
    assert (default.port, default.vhost, default.username) == (5672, "/", "guest")


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("amqp://h/?colour=red", "colour"),
        ("amqp://h/?queue_type=stream", "queue_type"),
        ("amqp://h/?mandatory=yes", "mandatory"),
        ("amqp://h/?max_message_bytes=0", "max_message_bytes"),
        ("amqp://h/?connect_timeout=-1", "connect_timeout"),
        ("amqp://h/?delay_tiers_ms=0,10", "delay_tiers_ms"),
        ("amqp://h/?delay_tiers=10,1", "delay_tiers"),  # unsorted: refused, not sorted
        ("amqp://h/?tls_ca=/ca.pem", "tls_ca"),  # TLS files on a plain URL: ignored = error
        ("amqp://h/?cafile=/ca.pem", "tls_ca"),  # the same under its 0.1 name
        ("amqp://h/?tls_verify=false", "tls_verify"),
        ("amqps://h/?tls_cert=/c.pem", "tls_key"),  # half a client certificate
        ("amqp://h/?auth_mechanism=GSSAPI", "auth_mechanism"),
        ("amqps://h/?auth_mechanism=EXTERNAL", "auth_mechanism"),  # needs a client cert
        ("http://h/", "amqp"),
    ],
)
def test_bad_options_are_one_line_errors_naming_the_option(url: str, names: str) -> None:
    # A 0.1 name is still read (with its DeprecationWarning) before the value is refused.
    deprecated = (
        pytest.warns(DeprecationWarning, match="cafile -> tls_ca")
        if "cafile=" in url
        else contextlib.nullcontext()
    )
    with deprecated, pytest.raises(InvalidURLError) as info:
        RabbitMQAdapter(url)
    message = str(info.value)
    assert names in message and "\n" not in message


def test_password_never_in_errors() -> None:
    with pytest.raises(InvalidURLError) as info:
        RabbitMQSettings.from_url("amqp://u:topsecret@h/?bogus=1")
    assert "topsecret" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        # An unencoded "/", "#" or "?" in a password ends the URL's authority there:
        # the parser then reads the password's first part as the port (#18 defect 24).
        "amqp://app:wJalrXUtnFEMI/K7MDENG@rabbit.internal:5672/prod",
        "amqps://app:wJalrXUtnFEMI#K7@rabbit.internal/prod",
        "amqp://app:wJalrXUtnFEMI?K7@rabbit.internal/prod",
    ],
)
def test_a_malformed_url_never_shows_any_part_of_the_password(url: str) -> None:
    with pytest.raises(InvalidURLError) as info:
        RabbitMQAdapter(url)
    message = str(info.value)
    assert "wJalrXUtnFEMI" not in message and "K7" not in message, message
    assert "percent-encode" in message and "\n" not in message


def test_errors_from_the_client_are_scrubbed_of_the_password() -> None:
    settings = RabbitMQSettings.from_url("amqp://app:s3cr%2Ft@h/")
    assert settings.password == "s3cr/t"
    text = settings.scrub("AMQPConnectionError: amqp://app:s3cr/t@h:5672/ s3cr%2Ft refused")
    assert "s3cr" not in text and "***" in text
    assert "s3cr" not in repr(settings)


def test_encode_is_the_rabbitmq_binding_binary_mode() -> None:
    env = full_envelope()
    message = encode(env)
    assert message.content_type == "application/json" and message.body == b'{"a":1}'
    assert message.headers["ce-specversion"] == "1.0" and message.headers["ce-id"] == env.id
    assert message.headers["ce-tenant"] == "acme"
    assert "content-type" not in message.headers, "datacontenttype is the content_type property"
    assert decode(message.headers, message.content_type, message.body).envelope == env


def test_transport_and_unknown_headers_never_poison() -> None:
    env = full_envelope()
    message = encode(env)
    headers = {
        **message.headers,
        "x-death": [{"count": 1, "queue": "q"}],
        "x-binary": b"\xff\xfe",
        "x-delivery-count": 2,
    }
    again = retry_headers(headers, attempt=3, not_before_ms=5)
    assert "x-death" not in again and again[ATTEMPT_HEADER] == 3
    assert "x-delivery-count" not in again  # the copy would count it again
    decoded = decode(headers | again, message.content_type, message.body)
    assert decoded.envelope == env and decoded.attempt == 3 and decoded.not_before_ms == 5


@pytest.mark.parametrize(
    "headers", [None, {"ce-specversion": b"\xff"}, {"ce-specversion": "1.0", "ce-id": "1"}]
)
def test_undecodable_messages_never_raise(headers: dict[str, object] | None) -> None:
    decoded = decode(headers, None, b"\x00junk")
    assert decoded.envelope is None and decoded.error


def test_official_sdk_binding_reads_ours_and_we_read_theirs() -> None:
    from cloudevents.core.bindings import rabbitmq
    from cloudevents.core.v1.event import CloudEvent

    env = full_envelope()
    ours = encode(env)
    event = rabbitmq.from_binary_event(
        rabbitmq.RabbitMQMessage(
            headers=ours.headers, content_type=ours.content_type, body=ours.body
        )
    )
    assert event.get_id() == env.id and event.get_type() == env.type
    assert event.get_extension("tenant") == "acme" and event.get_data() == {"a": 1}

    theirs = rabbitmq.to_binary_event(
        CloudEvent(
            attributes={
                "type": "t",
                "source": "/s",
                "datacontenttype": "application/json",
                "subject": "x",
            },
            data={"b": 2},
        )
    )
    decoded = decode(theirs.headers, theirs.content_type, theirs.body)
    assert decoded.envelope is not None, decoded.error
    assert decoded.envelope.type == "t" and decoded.envelope.subject == "x"
    assert decoded.envelope.data == theirs.body


def test_delay_tiers_are_seconds_and_name_their_queues_in_milliseconds() -> None:
    """The queue names of 0.1 (``delay-<n>ms``) stay, so a deployment's delay queues
    are the same whether its URL says delay_tiers_ms=50,1000 or delay_tiers=0.05,1."""
    s = RabbitMQSettings.from_url("amqp://h/?delay_tiers=0.05,1,60")
    assert s.delay_tiers == (0.05, 1, 60)
    assert delay_queues(s, "t", "g") == ["t/g/delay-50ms", "t/g/delay-1000ms", "t/g/delay-60000ms"]
    with pytest.warns(DeprecationWarning, match=r"delay_tiers_ms -> delay_tiers"):
        old = RabbitMQSettings.from_url("amqp://h/?delay_tiers_ms=60000,50,1000")
    assert old.delay_tiers == s.delay_tiers  # 0.1 sorted them: still so under the old name


def test_the_names_of_0_1_still_work_with_a_deprecation_warning() -> None:
    with pytest.warns(DeprecationWarning) as warned:
        s = RabbitMQSettings.from_url(
            "amqps://h/?cafile=/ca.pem&certfile=/c.pem&keyfile=/k.pem&verify=false"
        )
    assert len(warned) == 1 and "cafile -> tls_ca" in str(warned[0].message)
    assert (s.tls_ca, s.tls_cert, s.tls_key, s.tls_verify) == ("/ca.pem", "/c.pem", "/k.pem", False)


def test_a_message_accepted_by_publish_still_fits_when_parked_for_a_retry() -> None:
    """The size check of nack's re-publish must not refuse what publish accepted
    (the retry headers live inside the fixed overhead)."""
    message = encode(full_envelope())
    parked = retry_headers(message.headers, attempt=12345, not_before_ms=10**13)
    assert message_size(parked, message.content_type, message.body) == message.size


def test_a_repeated_option_means_its_last_value() -> None:
    """As it always has here: the earlier value is replaced, never even checked."""
    assert RabbitMQSettings.from_url("amqp://h/?heartbeat=x&heartbeat=5").heartbeat == 5
    with pytest.raises(InvalidURLError) as info:
        RabbitMQSettings.from_url("amqp://h/?heartbeat=5&heartbeat=3601")
    assert str(info.value) == (
        "option heartbeat='3601' in RabbitMQ URL 'amqp://h/?heartbeat=5"
        "&heartbeat=3601' is invalid: must be an integer from 0 to 3600"
    )
