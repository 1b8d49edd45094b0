"""Each broker codec against the official CloudEvents SDK's binding, both ways, with
non-ASCII values (issue #21): NATS (the SDK's HTTP binding, whose header rules
the NATS binding shares), RabbitMQ, the AMQP binding's properties, Kafka.

The same cases run through the real brokers in ``integration_tests/interop/``;
these pin each codec's rules fast (no broker). Beside test_cloudevents_interop.py,
which covers every attribute and data shape through ``eventbus.codec``.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.bindings import amqp as ce_amqp
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.bindings import rabbitmq as ce_rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from eventbus_kafka import codec as kafka_codec
from eventbus_nats import codec as nats_codec
from eventbus_rabbitmq import RabbitMQSettings
from eventbus_rabbitmq import codec as rabbitmq_codec

from eventbus import Envelope, InvalidURLError

SUBJECT = "Euro \u20ac \U0001f600"
CITY = "Z\u00fcrich/Gen\u00e8ve"
DATA = b'{"note":"Cr\xc3\xa8me br\xc3\xbbl\xc3\xa9e"}'
WHEN = datetime(2026, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
JSON = JSONFormat()


def sdk_event() -> CloudEvent:
    return CloudEvent(
        attributes={
            "specversion": "1.0",
            "id": "id-1",
            "source": "https://sdk.example/orders",
            "type": "com.example.order",
            "time": WHEN,
            "subject": SUBJECT,
            "datacontenttype": "application/json",
            "city": CITY,
        },
        data={"note": "Cr\u00e8me br\u00fbl\u00e9e"},
    )


def envelope() -> Envelope:
    return Envelope(
        id="id-2",
        type="com.example.order",
        source="https://eventbus.example/orders",
        time=WHEN,
        data=DATA,
        datacontenttype="application/json",
        subject=SUBJECT,
        extensions={"city": CITY},
    )


def assert_sdk_event_read(got: Envelope | None, error: str | None = None) -> None:
    assert got is not None, error
    assert (got.id, got.subject, got.time) == ("id-1", SUBJECT, WHEN)
    assert got.extensions == {"city": CITY}
    assert got.datacontenttype == "application/json"
    assert got.data.decode() == '{"note": "Cr\\u00e8me br\\u00fbl\\u00e9e"}'


def assert_envelope_read(event: Any) -> None:
    assert (event.get_id(), event.get_subject(), event.get_time()) == ("id-2", SUBJECT, WHEN)
    assert event.get_extension("city") == CITY
    assert event.get_datacontenttype() == "application/json"
    assert event.get_data() == {"note": "Cr\u00e8me br\u00fbl\u00e9e"}


# -- NATS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["nats", "http"])
def test_nats_reads_the_sdks_percent_encoded_headers(shape: str) -> None:
    message = ce_http.to_binary(sdk_event(), JSON)
    headers = dict(message.headers)
    if shape == "nats":
        headers["ce-datacontenttype"] = headers.pop("content-type")
    decoded = nats_codec.decode(headers, message.body)
    assert_sdk_event_read(decoded.envelope, decoded.error)


def test_nats_writes_what_the_sdk_encodes_and_the_sdk_reads_it() -> None:
    """Every value is the binding's encoding (the SDK's HTTP encoder, the same
    rule): upper-case %XY of the UTF-8 bytes of space, '"', '%' and non-ASCII."""
    headers, body = nats_codec.encode(envelope())
    assert "content-type" not in headers
    assert headers["ce-subject"] == "Euro%20%E2%82%AC%20%F0%9F%98%80"
    attributes: dict[str, Any] = {**envelope().attributes(), "time": WHEN}
    sdk = ce_http.to_binary(CloudEvent(attributes=attributes), JSON).headers
    for name, value in headers.items():
        if name not in ("ce-time", "ce-datacontenttype"):
            assert value == sdk[name], name
    assert_envelope_read(ce_http.from_binary(ce_http.HTTPMessage(headers, body), JSON))


@pytest.mark.parametrize(
    ("value", "read"),
    [
        ("Euro%20%e2%82%ac", "Euro \u20ac"),  # lower-case hex accepted
        ("%41BC", "ABC"),  # unnecessarily encoded: accepted
        ('"two words \\"q\\""', 'two words "q"'),  # older binding versions: quoted
        ('"a%20b"', "a b"),  # quoted, then percent-decoded
    ],
)
def test_nats_decodes_values_by_the_binding(value: str, read: str) -> None:
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
    decoded = nats_codec.decode({**headers, "ce-subject": value}, b"")
    assert decoded.envelope is not None and decoded.envelope.subject == read


def test_nats_refuses_percent_encoded_bytes_that_are_not_utf8() -> None:
    headers = {"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"}
    decoded = nats_codec.decode({**headers, "ce-subject": "%C0%A0"}, b"")  # overlong space
    assert decoded.envelope is None and "UTF-8" in (decoded.error or "")


@pytest.mark.parametrize(
    ("values", "encoded"),
    [
        (["a%20b", "x"], True),
        (["a%20b", "raw space"], False),
        (["a%20b", "\u00fc"], False),
        (["a%20b", "100%"], False),  # '%' not starting an escape
        (["a%20b", 'say "hi"'], False),
        (["a%20b", '"quoted space"'], True),  # the older binding's quoted form
    ],
)
def test_nats_tells_unencoded_writers_by_their_values(values: list[str], encoded: bool) -> None:
    assert nats_codec.percent_encoded(values) is encoded


# -- RabbitMQ ------------------------------------------------------------------------------


def test_rabbitmq_reads_the_sdks_binding_and_the_sdk_reads_ours() -> None:
    theirs = ce_rabbitmq.to_binary(sdk_event(), JSON)
    decoded = rabbitmq_codec.decode(theirs.headers, theirs.content_type, theirs.body)
    assert_sdk_event_read(decoded.envelope, decoded.error)
    ours = rabbitmq_codec.encode(envelope())
    assert ours.headers["ce-subject"] == SUBJECT  # UTF-8 text as it is
    message = ce_rabbitmq.RabbitMQMessage(ours.headers, ours.content_type, ours.body)
    assert_envelope_read(ce_rabbitmq.from_binary(message, JSON))


# -- AMQP binding properties on RabbitMQ -----------------------------------------------------


@pytest.mark.parametrize("prefix", ["cloudEvents_", "cloudEvents:"])
@pytest.mark.parametrize("time", [int(WHEN.timestamp() * 1000), WHEN, "2026-05-06T07:08:09.123Z"])
def test_rabbitmq_reads_the_amqp_bindings_properties(prefix: str, time: Any) -> None:
    """Either separator; ``time`` as AMQP milliseconds, a timestamp or its text."""
    message = ce_amqp.to_binary(sdk_event(), JSON)
    properties = {
        prefix + name.removeprefix("cloudEvents_"): value
        for name, value in message.application_properties.items()
    }
    properties[prefix + "time"] = time
    content_type = message.properties["content-type"]
    decoded = rabbitmq_codec.decode(properties, content_type, message.application_data)
    assert_sdk_event_read(decoded.envelope, decoded.error)


def test_rabbitmq_amqp_native_values_are_canonical_text_and_ce_headers_win() -> None:
    headers = {
        "cloudEvents_specversion": "1.0",
        "cloudEvents_id": "amqp-id",
        "cloudEvents_source": "/s",
        "cloudEvents_type": "t",
        "cloudEvents_urgent": True,
        "cloudEvents_count": 3,
        "ce-id": "ce-id",
    }
    decoded = rabbitmq_codec.decode(headers, None, b"")
    assert decoded.envelope is not None, decoded.error
    assert decoded.envelope.id == "ce-id"
    assert decoded.envelope.extensions == {"urgent": "true", "count": "3"}


def test_rabbitmq_foreign_message_reason_lists_header_names_bounded() -> None:
    headers: dict[str, Any] = {f"x-header-{n:03d}-" + "n" * 40: "v" * 1000 for n in range(100)}
    headers["x-death"] = [{"count": 1}]  # the broker's, not the producer's
    decoded = rabbitmq_codec.decode(headers, "application/json", b"{}")
    reason = decoded.error or ""
    assert decoded.envelope is None and "not a CloudEvent" in reason
    assert "x-header-000-" in reason and "more]" in reason and "x-death" not in reason
    assert "v" * 10 not in reason  # names only
    assert len(reason) < rabbitmq_codec.REASON_NAMES_LIMIT + 400


# -- binding=amqp: eventbus writes the AMQP binding's properties ----------------------------


def amqp_message(ours: rabbitmq_codec.AmqpMessage) -> ce_amqp.AMQPMessage:
    """What an AMQP binding reader gets: the headers as application properties."""
    properties = {} if ours.content_type is None else {"content-type": ours.content_type}
    return ce_amqp.AMQPMessage(properties, dict(ours.headers), ours.body)


def test_binding_amqp_is_read_by_the_sdks_amqp_binding() -> None:
    """Every attribute under ``cloudEvents_`` as an AMQP string, ``time`` as its
    canonical text (microseconds kept), no ``ce-`` header; the SDK reads them all."""
    exact = WHEN.replace(microsecond=123456)
    ours = rabbitmq_codec.encode(dataclasses.replace(envelope(), time=exact), "amqp")
    assert all(name.startswith("cloudEvents_") for name in ours.headers), ours.headers
    assert all(isinstance(value, str) for value in ours.headers.values())
    assert ours.headers["cloudEvents_subject"] == SUBJECT  # UTF-8 text as it is
    assert ours.headers["cloudEvents_time"] == "2026-05-06T07:08:09.123456Z"
    event = ce_amqp.from_binary(amqp_message(ours), JSON)
    assert event.get_time() == exact
    assert event.get_source() == "https://eventbus.example/orders"
    assert event.get_type() == "com.example.order" and event.get_specversion() == "1.0"
    assert event.get_extension("dataversion") == "1"
    exact_ms = rabbitmq_codec.encode(envelope(), "amqp")
    assert_envelope_read(ce_amqp.from_binary(amqp_message(exact_ms), JSON))


@pytest.mark.parametrize("prefix", ["cloudEvents_", "cloudEvents:"])
def test_binding_amqp_is_read_back_by_eventbus_under_either_separator(prefix: str) -> None:
    ours = rabbitmq_codec.encode(envelope(), "amqp")
    headers = {prefix + n.removeprefix("cloudEvents_"): v for n, v in ours.headers.items()}
    decoded = rabbitmq_codec.decode(headers, ours.content_type, ours.body)
    assert decoded.envelope == envelope(), decoded.error


def test_binding_defaults_to_rabbitmq_and_a_bad_one_names_the_choices() -> None:
    assert RabbitMQSettings.from_url("amqp://mq/").binding == "rabbitmq"
    assert RabbitMQSettings.from_url("amqp://mq/?binding=amqp").binding == "amqp"
    assert "ce-id" in rabbitmq_codec.encode(envelope()).headers
    with pytest.raises(InvalidURLError) as caught:
        RabbitMQSettings.from_url("amqp://mq/?binding=amqp10")
    message = str(caught.value)
    assert "binding='amqp10'" in message and "use rabbitmq or amqp" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match="use rabbitmq or amqp"):
        RabbitMQSettings(binding="AMQP")  # type: ignore[arg-type]


# -- Kafka ---------------------------------------------------------------------------------


def test_kafka_reads_the_sdks_binding_and_the_sdk_reads_ours() -> None:
    theirs = ce_kafka.to_binary(sdk_event(), JSON)
    decoded = kafka_codec.decode(theirs.key, theirs.value, list(theirs.headers.items()))
    assert_sdk_event_read(decoded.envelope, decoded.error)
    ours = kafka_codec.encode(envelope())
    assert dict(ours.headers)["ce_subject"] == SUBJECT.encode()  # UTF-8 bytes as they are
    message = ce_kafka.KafkaMessage(dict(ours.headers), ours.key, ours.value)
    assert_envelope_read(ce_kafka.from_binary(message, JSON))
